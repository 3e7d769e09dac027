"""Materialised decisions answer exactly what a fresh evaluation answers, whatever happens between.

10,000 random checks over a hundred tenants of every tier and status, interleaved with feed
batches (account and usage changes through the follower's path, the answers they drop re-decided
in the background), usage recorded here (the ledger), a policy reload, and time passing (seconds, and jumps of days across period, trial and
grace ends). Answers the policy bounds by usage (`used_bound`) survive usage recorded here until
the bound is crossed, with `used` and `remaining` rendered from the live counter. Each check is asked of the sidecar's decision service (materialised answers) and of
one that evaluates the policy every time; their answers must be equal.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from tiergate.feed import FeedAccount, FeedChange, FeedUsage
from tiergate.models import Account, Decision, Status, UsageCounter
from tiergate.periods import rfc3339
from tiergate.policy.bundle import load_bundle
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.sidecar.decisions import service as service_module
from tiergate.sidecar.decisions.cache import DecisionCache
from tiergate.sidecar.decisions.policy_io import period_for
from tiergate.sidecar.decisions.service import DecisionService
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.replica.store import ReplicaReader, ReplicaWriter, open_replica
from tiergate.sidecar.usage.ledger import UsageLedger

ROOT = Path(__file__).parents[3]
START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TIERS = ("free", "starter", "pro", "enterprise")
STATUSES: tuple[Status, ...] = ("active", "trialing", "past_due", "canceled", "unpaid", "paused")
FEATURES = ("api_calls", "exports", "storage_gb", "seats", "dashboards", "reports", "sso", "nope")
METERED = ("api_calls", "exports")
CHECKS = 10_000


def random_account(rng: random.Random, tenant: str, now: datetime) -> Account:
    start = now - timedelta(days=rng.randint(0, 29), hours=rng.randint(0, 23))
    return Account(
        tenant=tenant,
        tier=rng.choice(TIERS),
        status=rng.choice(STATUSES),
        quantity=rng.randint(1, 30),
        current_period_start=start,
        current_period_end=start + timedelta(days=30),
        trial_end=now + timedelta(days=rng.uniform(-3, 3)) if rng.random() < 0.3 else None,
        cancel_at_period_end=rng.random() < 0.1,
        past_due_since=now - timedelta(days=rng.uniform(0, 10)) if rng.random() < 0.2 else None,
    )


async def test_materialised_answers_equal_fresh_ones(tmp_path: Path) -> None:
    rng = random.Random(15)
    clock = [START.timestamp()]
    path = tmp_path / "replica.db"
    writer = ReplicaWriter(open_replica(path))
    tenants = [f"t{i}" for i in range(120)]
    accounts = {t: random_account(rng, t, START) for t in tenants[:100]}  # the rest: default tier
    counters = [
        UsageCounter(
            tenant=t, code=code, period_start=a.current_period_start or START, value=rng.randint(0, 1200)
        )
        for t, a in accounts.items()
        for code in METERED
        if rng.random() < 0.7
    ]
    writer.replace_all(accounts.values(), counters, data_as_of=START, position=0)
    reader = ReplicaReader(path)
    engine = EmbeddedEngine(compiled=True)
    await engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml"))
    ledger = UsageLedger()

    def service(cache_size: int) -> DecisionService:
        return DecisionService(
            reader,
            engine,
            SidecarMetrics(replica_age=lambda: 0.0),
            cache=DecisionCache(cache_size, ttl_s=0.0),
            ledger=ledger,
            log_sample=0.0,
            log_denies=False,
            clock=lambda: clock[0],
        )

    materialised, fresh = service(100_000), service(0)
    await materialised.learn_usage_scope()  # as the recorder does: bounded answers survive usage
    seq = 0
    for step in range(CHECKS):
        roll = rng.random()
        tenant = rng.choice(tenants)
        if roll < 0.03:  # a feed batch, committed and announced the way the follower does
            seq += 1
            now = datetime.fromtimestamp(clock[0], UTC)
            if rng.random() < 0.5:
                change = FeedChange(
                    seq=seq,
                    kind="account",
                    tenant=tenant,
                    account=FeedAccount(**random_account(rng, tenant, now).model_dump()),
                )
            else:
                start = period_for(reader.account(tenant), now, rfc3339(now) or "")[0]
                usage = FeedUsage(
                    tenant=tenant,
                    code=rng.choice(METERED),
                    period_start=datetime.fromisoformat(start),
                    value=rng.randint(0, 1500),
                )
                change = FeedChange(seq=seq, kind="usage", tenant=tenant, usage=usage)
            writer.apply_changes([change], position=seq, data_as_of=now)
            reader.applied({tenant})
            if rng.random() < 0.5:
                await asyncio.sleep(0)  # the dropped answers are re-decided in the background
        elif roll < 0.15:  # usage accepted here, not in the replica yet: mostly small, some large
            now = datetime.fromtimestamp(clock[0], UTC)
            start = period_for(reader.account(tenant), now, rfc3339(now) or "")[0]
            amount = rng.randint(1, 3) if rng.random() < 0.8 else rng.randint(1, 300)
            ledger.add((tenant, rng.choice(METERED), start), amount)
        elif roll < 0.1502:  # a policy reload (same policies: answers of the old revision go)
            materialised.cache.clear()
        clock[0] += rng.uniform(0, 2) if rng.random() < 0.99 else rng.uniform(0, 3 * 86400)
        feature, quantity = rng.choice(FEATURES), rng.choice((1, 1, 1, 1, 5, 400))
        if step % 2:  # GET /v1/check's path: the kept bytes plus the lineage, as decide renders
            body = orjson.loads(await materialised.decide_json(tenant, feature, quantity))
            got = Decision.from_json(body)
        else:
            got = await materialised.decide(tenant, feature, quantity)
        want = await fresh.decide(tenant, feature, quantity)
        if step % 2:
            rendered = orjson.loads(orjson.dumps(want))
            assert list(body) == list(rendered)  # the same keys, in the same order
            assert {**body, "decision_id": ""} == {**rendered, "decision_id": ""}
        assert (got.allow, got.reason, got.tier, got.limit, got.used, got.remaining, got.valid_until) == (
            want.allow,
            want.reason,
            want.tier,
            want.limit,
            want.used,
            want.remaining,
            want.valid_until,
        ), f"check {step}: {tenant} {feature} x{quantity} at {clock[0]}"
        assert (got.data_as_of, got.stale, got.policy_revision) == (
            want.data_as_of,
            want.stale,
            want.policy_revision,
        )
    counts = materialised.counts
    assert counts.hits > CHECKS * 0.15, f"only {counts.hits} of {CHECKS} checks were answered from memory"
    assert fresh.counts.hits == 0
    assert counts.rematerialised > 0, "no answer dropped by a feed batch was re-decided in the background"
    await engine.close()
    reader.close()
    writer.db.close()


async def test_metered_traffic_keeps_its_answers_until_the_limit(tmp_path: Path) -> None:
    """Each check followed by one unit of usage for the same tenant and feature: answered from
    memory until the limit is reached, equal to a fresh evaluation every time (deny past it)."""
    path = tmp_path / "replica.db"
    writer = ReplicaWriter(open_replica(path))
    tenants = [f"m{i}" for i in range(10)]
    writer.replace_all([], [], data_as_of=START, position=0)  # all on the default tier's limit
    reader = ReplicaReader(path)
    engine = EmbeddedEngine(compiled=True)
    await engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml"))
    ledger = UsageLedger()
    services = [
        DecisionService(
            reader,
            engine,
            SidecarMetrics(replica_age=lambda: 0.0),
            cache=DecisionCache(size, ttl_s=0.0),
            ledger=ledger,
            log_sample=0.0,
            log_denies=False,
            clock=lambda: START.timestamp(),
        )
        for size in (100_000, 0)
    ]
    materialised, fresh = services
    await materialised.learn_usage_scope()
    start = period_for(None, START, rfc3339(START) or "")[0]
    rng = random.Random(26)
    checks = denied = 0
    for _ in range(3_000):
        tenant = rng.choice(tenants)
        quantity = rng.choice((1, 1, 5, 20))
        body = orjson.loads(await materialised.decide_json(tenant, "api_calls", quantity))
        want = orjson.loads(orjson.dumps(await fresh.decide(tenant, "api_calls", quantity)))
        assert {**body, "decision_id": ""} == {**want, "decision_id": ""}
        checks += 1
        if body["allow"]:
            ledger.add((tenant, "api_calls", start), quantity)
        denied += not body["allow"]
    assert body["limit"] is not None and denied > 100, "the limits were never reached"
    counts = materialised.counts
    # a miss per (tenant, quantity) key and per crossing of a bound; everything else from memory
    assert counts.hits > checks * 0.9, f"{counts.hits} of {checks} from memory"
    await engine.close()
    reader.close()
    writer.db.close()


async def test_answers_over_the_limit_hold_until_a_correction_brings_usage_back(tmp_path: Path) -> None:
    """Usage recorded after denies too (an app that reports what it did anyway), and now and then
    a correction that takes usage back under the limit: a deny over the limit (`used_floor`) is
    answered from memory while usage grows and re-decided once a correction crosses its floor;
    every answer equals a fresh evaluation."""
    path = tmp_path / "replica.db"
    writer = ReplicaWriter(open_replica(path))
    writer.replace_all([], [], data_as_of=START, position=0)
    reader = ReplicaReader(path)
    engine = EmbeddedEngine(compiled=True)
    await engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml"))
    ledger = UsageLedger()
    materialised, fresh = (
        DecisionService(
            reader,
            engine,
            SidecarMetrics(replica_age=lambda: 0.0),
            cache=DecisionCache(size, ttl_s=0.0),
            ledger=ledger,
            log_sample=0.0,
            log_denies=False,
            clock=lambda: START.timestamp(),
        )
        for size in (100_000, 0)
    )
    await materialised.learn_usage_scope()
    start = period_for(None, START, rfc3339(START) or "")[0]
    rng = random.Random(39)
    tenants = [f"o{i}" for i in range(5)]
    used = dict.fromkeys(tenants, 0)
    reasons: collections.Counter[tuple[bool, str]] = collections.Counter()
    for step in range(2_000):
        tenant = rng.choice(tenants)
        body = orjson.loads(await materialised.decide_json(tenant, "api_calls", 1))
        want = orjson.loads(orjson.dumps(await fresh.decide(tenant, "api_calls", 1)))
        assert {**body, "decision_id": ""} == {**want, "decision_id": ""}, f"step {step}"
        reasons[body["allow"], body["reason"]] += 1
        amount = rng.choice((1, 5, 20)) if rng.random() > 0.02 else -min(used[tenant], rng.choice((30, 300)))
        used[tenant] += amount
        ledger.add((tenant, "api_calls", start), amount)
    assert reasons[False, "limit_exceeded"] > 500 and reasons[True, "ok"] > 100, reasons
    assert materialised.counts.hits > 2_000 * 0.8, f"{materialised.counts.hits} of 2000 from memory"
    await engine.close()
    reader.close()
    writer.db.close()


async def test_after_a_snapshot_the_recent_answers_are_decided_again_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot (a new replica generation) drops every answer; the warm start re-decides the
    most recently decided ones, newest first, from the new data and under its share of the loop's
    time: the checks that follow are hits, equal to fresh evaluations of the new data."""
    monkeypatch.setattr(service_module, "REMATERIALISE_MAX", 30)
    monkeypatch.setattr(service_module, "REMATERIALISE_SLICE_S", EVAL_S * 2.5)
    path = tmp_path / "replica.db"
    writer = ReplicaWriter(open_replica(path))
    rng = random.Random(41)
    tenants = [f"w{i}" for i in range(40)]
    writer.replace_all([random_account(rng, t, START) for t in tenants], [], data_as_of=START, position=0)
    reader = ReplicaReader(path)
    engine = SlowEngine(compiled=True)
    await engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml"))
    materialised, fresh = (
        DecisionService(
            reader,
            engine,
            SidecarMetrics(replica_age=lambda: 0.0),
            cache=DecisionCache(size, ttl_s=0.0),
            ledger=UsageLedger(),
            log_sample=0.0,
            log_denies=False,
            clock=lambda: START.timestamp(),
        )
        for size in (100_000, 0)
    )
    for tenant in tenants:  # w39 is the most recently decided
        await materialised.decide(tenant, "reports")
    snapshot = [random_account(rng, t, START) for t in tenants]  # new tiers and statuses
    writer.replace_all(snapshot, [], data_as_of=START, position=1)
    adopted = asyncio.Event()
    reader.subscribe(lambda meta, tenants: adopted.set() if tenants is None else None)
    started = time.perf_counter()
    reader.refresh()  # read whole on a thread; the answers go when it is adopted
    await asyncio.wait_for(adopted.wait(), 30)
    await materialised.wait_rematerialised()
    elapsed = time.perf_counter() - started
    assert materialised.counts.rematerialised == 30  # REMATERIALISE_MAX, the newest first
    hits = materialised.counts.hits
    for tenant in reversed(tenants[10:]):
        got = orjson.loads(await materialised.decide_json(tenant, "reports"))
        want = orjson.loads(orjson.dumps(await fresh.decide(tenant, "reports")))
        assert {**got, "decision_id": ""} == {**want, "decision_id": ""}
    assert materialised.counts.hits - hits == 30, "the 30 newest were not all answered from memory"
    assert materialised.cache.get("w0", "reports", 1, START.timestamp(), False) is None  # the oldest
    # The share: each evaluation here costs at least EVAL_S, so 30 of them at a quarter of the
    # loop's time were spread over at least 4x their time (less the last slice, not followed by a pause).
    work = 30 * EVAL_S
    slack = service_module.REMATERIALISE_SLICE_S
    # the documented share: a quarter of the loop
    assert elapsed >= work * 4 - 3 * slack, f"{elapsed:.3f} s"
    await engine.close()
    reader.close()
    writer.db.close()


EVAL_S = 0.002


class SlowEngine(EmbeddedEngine):
    """regorus, each evaluation made to take at least EVAL_S of CPU (a policy that costs more)."""

    async def evaluate(self, path: str, document: Mapping[str, Any]) -> Any:
        until = time.perf_counter() + EVAL_S
        while time.perf_counter() < until:
            pass
        return await super().evaluate(path, document)


async def test_a_rendered_deny_logs_the_line_a_decided_one_does(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    ReplicaWriter(open_replica(path)).replace_all([], [], data_as_of=START, position=0)
    reader = ReplicaReader(path)
    engine = EmbeddedEngine(compiled=True)
    await engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml"))
    service = DecisionService(
        reader,
        engine,
        SidecarMetrics(replica_age=lambda: 0.0),
        cache=DecisionCache(None, ttl_s=0.0),
        ledger=UsageLedger(),
        log_sample=0.0,
        log_denies=True,
    )
    with structlog.testing.capture_logs() as logged:
        await service.decide("t_free", "sso")  # the default tier has no sso: a deny (a miss)
        await service.decide_json("t_free", "sso")  # the same, from memory and rendered
        await service.decide("t_free", "sso")  # from memory, as an object
    lines = [{k: v for k, v in line.items() if k != "decision_id"} for line in logged]
    assert len(lines) == 3 and lines[0] == lines[1] == lines[2]
    assert lines[0]["reason"] == "not_in_plan" and lines[0]["allow"] is False
    assert [list(line) for line in logged] == [list(logged[0])] * 3  # same fields, same order
    await engine.close()
    reader.close()
