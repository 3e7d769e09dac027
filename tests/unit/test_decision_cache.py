"""The decision cache: expiry at valid_until or the TTL, per-tenant invalidation, bounds."""

from __future__ import annotations

from sidecar.decisions.cache import DecisionCache
from tiergate.models import PolicyAnswer

ANSWER = PolicyAnswer(allow=True, reason="ok", tier="pro")


def put(
    cache: DecisionCache,
    tenant: str = "t",
    feature: str = "f",
    *,
    valid_until: float | None = None,
    stale: bool = False,
    epoch: int | None = None,
) -> None:
    cache.put(
        tenant,
        feature,
        1,
        ANSWER,
        now=100.0,
        valid_until=valid_until,
        stale=stale,
        epoch=cache.epoch if epoch is None else epoch,
    )


def test_entry_lives_until_ttl() -> None:
    cache = DecisionCache(10, ttl_s=2.0)
    put(cache)
    assert cache.get("t", "f", 1, 101.9, False) == ANSWER
    assert cache.get("t", "f", 1, 102.0, False) is None


def test_valid_until_shortens_the_life() -> None:
    cache = DecisionCache(10, ttl_s=60.0)
    put(cache, valid_until=100.5)
    assert cache.get("t", "f", 1, 100.4, False) == ANSWER
    assert cache.get("t", "f", 1, 100.5, False) is None


def test_already_expired_answers_are_not_stored() -> None:
    cache = DecisionCache(10, ttl_s=60.0)
    put(cache, valid_until=99.0)
    assert len(cache) == 0


def test_quantity_and_staleness_are_part_of_the_answer() -> None:
    cache = DecisionCache(10, ttl_s=60.0)
    put(cache)
    assert cache.get("t", "f", 2, 100.0, False) is None
    assert cache.get("t", "f", 1, 100.0, True) is None


def test_invalidating_a_tenant_drops_only_its_answers() -> None:
    cache = DecisionCache(10, ttl_s=60.0)
    put(cache, "a", "x")
    put(cache, "a", "y")
    put(cache, "b", "x")
    cache.invalidate("a")
    assert cache.get("a", "x", 1, 100.0, False) is None
    assert cache.get("b", "x", 1, 100.0, False) == ANSWER
    assert len(cache) == 1


def test_an_answer_computed_across_an_invalidation_is_not_stored() -> None:
    cache = DecisionCache(10, ttl_s=60.0)
    epoch = cache.epoch
    cache.invalidate("t")  # the tenant changed while the engine was evaluating
    put(cache, epoch=epoch)
    assert cache.get("t", "f", 1, 100.0, False) is None


def test_bounded_by_evicting_the_least_recently_written_tenant() -> None:
    cache = DecisionCache(2, ttl_s=60.0)
    for tenant in ("a", "b", "c"):
        put(cache, tenant)
    assert len(cache) == 2
    assert cache.get("a", "f", 1, 101.0, False) is None
    assert cache.get("c", "f", 1, 101.0, False) == ANSWER


def test_size_zero_disables_caching() -> None:
    cache = DecisionCache(0, ttl_s=60.0)
    put(cache)
    assert cache.get("t", "f", 1, 100.0, False) is None
