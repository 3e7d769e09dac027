"""The decision cache expires entries at valid_until or the TTL, and stays bounded."""

from __future__ import annotations

from sidecar.cache import DecisionCache

ANSWER = {"allow": True, "reason": "ok"}


def test_entry_lives_until_ttl() -> None:
    cache = DecisionCache(10, ttl_s=2.0)
    cache.put("k", ANSWER, now=100.0, valid_until=None)
    assert cache.get("k", 101.9) == ANSWER
    assert cache.get("k", 102.0) is None


def test_valid_until_shortens_the_life() -> None:
    cache = DecisionCache(10, ttl_s=60.0)
    cache.put("k", ANSWER, now=100.0, valid_until=100.5)
    assert cache.get("k", 100.4) == ANSWER
    assert cache.get("k", 100.5) is None


def test_already_expired_answers_are_not_stored() -> None:
    cache = DecisionCache(10, ttl_s=60.0)
    cache.put("k", ANSWER, now=100.0, valid_until=99.0)
    assert len(cache) == 0


def test_bounded_by_evicting_the_oldest() -> None:
    cache = DecisionCache(2, ttl_s=60.0)
    for key in ("a", "b", "c"):
        cache.put(key, ANSWER, now=0.0, valid_until=None)
    assert len(cache) == 2
    assert cache.get("a", 1.0) is None
    assert cache.get("c", 1.0) == ANSWER


def test_size_zero_disables_caching() -> None:
    cache = DecisionCache(0, ttl_s=60.0)
    cache.put("k", ANSWER, now=0.0, valid_until=None)
    assert cache.get("k", 0.0) is None
