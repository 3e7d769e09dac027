"""The decision cache: expiry at valid_until or the TTL, per-tenant invalidation, bounds."""

from __future__ import annotations

import dataclasses
import random
import tracemalloc

import orjson

from tiergate.models import REASONS, Decision, PolicyAnswer
from tiergate.sidecar.decisions.cache import DecisionCache, Materialised, UsedBound

ANSWER = Materialised.of(PolicyAnswer(allow=True, reason="ok", tier="pro"))


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


def test_bounded_by_a_memory_budget_in_bytes() -> None:
    cache = DecisionCache(None, ttl_s=0.0, max_bytes=10_000)
    for n in range(1000):
        put(cache, f"tenant-{n}")
    assert 0 < cache.bytes <= 10_000
    assert 0 < len(cache) < 1000
    assert cache.get("tenant-999", "f", 1, 101.0, False) == ANSWER  # the newest stay
    assert cache.get("tenant-0", "f", 1, 101.0, False) is None


def test_the_budget_estimate_holds_what_python_really_spends() -> None:
    """tracemalloc's count of a filled cache stays within 10 % of the cache's own estimate, with
    realistic answers (limits, usage, a valid_until) and a few quantities other than 1."""
    rng = random.Random(5)
    answers = [
        Materialised.of(
            PolicyAnswer(
                allow=rng.random() < 0.7,
                reason=rng.choice(["ok", "limit_exceeded", "not_in_plan"]),
                tier=rng.choice(["free", "starter", "pro"]),
                limit=rng.choice([None, 1000, 20000]),
                used=rng.randrange(0, 30000),
                remaining=rng.randrange(0, 20000),
                valid_until=f"2026-12-{rng.randint(1, 28):02d}T00:00:00Z",
            )
        )
        for _ in range(500)
    ]
    features = ["api_calls", "reports", "sso", "exports", "dashboards"]
    tenants = [f"t_{n:06d}" for n in range(20_000)]  # the tenant ids exist before: not the cache's
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = DecisionCache(None, ttl_s=0.0, max_bytes=1 << 40)
        for tenant in tenants:
            for feature in rng.sample(features, rng.randint(1, 5)):
                quantity = 1 if rng.random() < 0.9 else rng.randint(2, 5000)
                cache.put(
                    tenant,
                    feature,
                    quantity,
                    rng.choice(answers),
                    now=100.0,
                    valid_until=None,
                    stale=False,
                    epoch=cache.epoch,
                )
        spent = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.9 * spent <= cache.bytes <= 1.1 * spent, (spent, cache.bytes, len(cache))


def test_a_hit_gives_back_the_answer_as_rendered() -> None:
    answer = PolicyAnswer(
        allow=False,
        reason="limit_exceeded",
        tier="free",
        limit=10,
        used=10,
        remaining=0,
        valid_until="2026-12-01T00:00:00Z",
    )
    cache = DecisionCache(None, ttl_s=0.0)
    cache.put("t", "exports", 3, Materialised.of(answer), now=1.0, valid_until=None, stale=True, epoch=0)
    found = cache.get("t", "exports", 3, 2.0, True)
    assert found is not None and (found.allow, found.reason) == (False, "limit_exceeded")
    assert found.answer() == answer
    decision = Decision.of(
        answer,
        tenant="t",
        feature="exports",
        quantity=3,
        decision_id="x",
        policy_revision="r",
        data_as_of=None,
        stale=True,
    )
    assert orjson.dumps(decision).startswith(found.head + b",")


def test_a_policy_inventing_reasons_is_cached_up_to_the_outcome_table() -> None:
    cache = DecisionCache(None, ttl_s=0.0)
    for n in range(300):
        answer = Materialised.of(PolicyAnswer(allow=False, reason=f"custom_{n}", tier=None))
        cache.put("t", f"f{n}", 1, answer, now=1.0, valid_until=None, stale=False, epoch=cache.epoch)
    assert cache.get("t", "f0", 1, 2.0, False) is not None
    assert cache.get("t", "f299", 1, 2.0, False) is None  # past 256 reasons: decided each time
    assert len(cache) == 256 - len(REASONS)  # the built-in reasons take the first places


def test_a_bounded_answer_keeps_its_range_and_survives_usage_of_its_feature() -> None:
    cache = DecisionCache(100, ttl_s=60.0)
    answer = PolicyAnswer(allow=False, reason="limit_exceeded", tier="free", limit=100, used=120, remaining=0)
    bound = UsedBound(96, 2**63 - 1, 100, "2026-12-01T00:00:00Z")
    cache.put(
        "t",
        "f",
        5,
        Materialised.of(answer, bound),
        now=100.0,
        valid_until=None,
        stale=False,
        epoch=cache.epoch,
    )
    put(cache, "t", "f")  # an answer without a bound, same feature
    found = cache.get("t", "f", 5, 100.0, False)
    assert found is not None and found.bound == bound and found.answer() == answer
    cache.invalidate_feature("t", "f", keep_bounded=True)
    assert cache.get("t", "f", 1, 100.0, False) is None  # unbounded: dropped
    kept = cache.get("t", "f", 5, 100.0, False)
    assert kept is not None
    assert kept.with_used(130).answer() == dataclasses.replace(answer, used=130)
    assert kept.with_used(97).answer() == dataclasses.replace(answer, used=97, remaining=3)
