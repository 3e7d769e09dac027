"""A decision record's input is the one the decision was made from, though the record's JSON is made
only when it is read or shipped: cached denies share their fresh deny's input, and a feed batch
that changes the tenant after the decision changes nothing in the records already kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from tiergate.feed import FeedAccount, FeedChange
from tiergate.models import Account, Status
from tiergate.policy.bundle import load_bundle
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.sidecar.decisions.cache import DecisionCache
from tiergate.sidecar.decisions.records import DecisionRecords
from tiergate.sidecar.decisions.service import DecisionService
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.replica.store import ReplicaReader, ReplicaWriter, open_replica
from tiergate.sidecar.usage.ledger import UsageLedger

ROOT = Path(__file__).parents[3]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def overdue(status: Status = "past_due") -> Account:
    return Account(
        tenant="t_1",
        tier="pro",
        status=status,
        quantity=2,
        current_period_start=NOW - timedelta(days=3),
        current_period_end=NOW + timedelta(days=27),
        past_due_since=NOW - timedelta(days=40),
    )


async def test_records_keep_the_input_of_their_decision_after_the_tenant_changes(tmp_path: Path) -> None:
    path = tmp_path / "replica.db"
    writer = ReplicaWriter(open_replica(path))
    writer.replace_all([overdue()], [], data_as_of=NOW, position=5)
    reader = ReplicaReader(path)
    engine = EmbeddedEngine(compiled=True)
    await engine.load(load_bundle(ROOT / "policies", ROOT / "plans" / "plans.yaml"))
    clock = [NOW.timestamp()]
    service = DecisionService(
        reader,
        engine,
        SidecarMetrics(replica_age=lambda: 0.0),
        cache=DecisionCache(1000, ttl_s=0.0),
        ledger=UsageLedger(),
        log_sample=0.0,
        log_denies=False,
        clock=lambda: clock[0],
    )
    records = service.records = DecisionRecords(1 << 20, allow_sample=0.0)
    fresh = await service.decide("t_1", "sso")
    cached = orjson.loads(await service.decide_json("t_1", "sso"))
    assert (fresh.reason, cached["reason"]) == ("payment_overdue", "payment_overdue")

    # The tenant pays: the account changes under the records already kept.
    change = FeedChange(
        seq=6, kind="account", tenant="t_1", account=FeedAccount(**overdue("active").model_dump())
    )
    writer.apply_changes([change], position=6, data_as_of=NOW)
    reader.applied({"t_1"})
    clock[0] += 60
    assert (await service.decide("t_1", "sso")).allow

    first, second = records.get(fresh.decision_id), records.get(cached["decision_id"])
    assert first is not None and second is not None
    for record in (first, second):
        assert record["input"]["account"]["status"] == "past_due"
        assert record["input"]["now"] == "2026-11-20T12:00:00Z"
        assert record["replica"]["position"] == 5 and record["account_version"] == 0
    assert first["decision"] == fresh.body()
    assert second["decision"] == cached
    shipped = [orjson.loads(raw) for raw in records.take()]
    assert shipped == [first, second]  # the allow after the payment is not recorded (sample 0)
