"""The compact in-memory index answers exactly what the replica file holds.

Randomized: accounts with every optional field, times in and out of the canonical form, values
beyond 32 and 64 bits, non-ASCII and long tenant ids, counters over several periods; loaded
whole, then changed tenant by tenant (upserts, deletes, counters only), and compared after every
step with a plain-dict model, and through a real replica file with the reader that reads SQLite.
"""

from __future__ import annotations

import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tiergate.amounts import Amount, stored
from tiergate.feed import FeedAccount, FeedChange, FeedUsage
from tiergate.models import Account, UsageCounter
from tiergate.sidecar.replica.index import PACKED_FIELDS, Counter, ReplicaIndex, UsageRow, _format_time
from tiergate.sidecar.replica.rows import AccountRow
from tiergate.sidecar.replica.store import ReplicaReader, ReplicaWriter, open_replica
from tiergate.usage_events import GAUGE_PERIOD_START

AS_OF = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TIERS = ("free", "pro", "team", "enterprise")
STATUSES = ("active", "trialing", "past_due", "canceled", "paused")
CODES = ("api_calls", "reports", "exports", "storage_gb")


def some_time(rng: random.Random) -> str:
    moment = AS_OF + timedelta(seconds=rng.randint(-400 * 86400, 400 * 86400))
    odd = (
        "%Y-%m-%dT%H:%M:%S+00:00",  # not canonical: kept as written
        "%Y-%m-%dT%H:%M:%S.500000Z",
    )
    return moment.strftime(rng.choice(odd) if rng.random() < 0.03 else "%Y-%m-%dT%H:%M:%SZ")


def maybe(rng: random.Random, value: str, chance: float = 0.3) -> str | None:
    return value if rng.random() < chance else None


def some_int(rng: random.Random) -> int:
    if rng.random() < 0.02:
        return 2**63 + 5  # beyond 64 bits: kept as is
    return rng.choice((0, 1, rng.randint(2, 40), rng.randint(2**31, 2**40), -rng.randint(1, 99)))


def some_row(rng: random.Random, tenant: str) -> AccountRow:
    periodless = rng.random() < 0.3
    return AccountRow(
        tenant=tenant,
        tier=rng.choice(TIERS),
        status=rng.choice(STATUSES),
        quantity=some_int(rng),
        current_period_start=None if periodless else some_time(rng),
        current_period_end=None if periodless else some_time(rng),
        trial_end=maybe(rng, some_time(rng)),
        cancel_at_period_end=rng.choice((0, 1)),
        past_due_since=maybe(rng, some_time(rng)),
        version=some_int(rng),
        pending_tier=maybe(rng, rng.choice(TIERS)),
        pending_interval=maybe(rng, rng.choice(("month", "year"))),
        pending_at=maybe(rng, some_time(rng)),
        subscription_id=maybe(rng, f"sub_{rng.randrange(16**12):012x}", 0.7),
        addons=maybe(rng, f'{{"extra_seats":{rng.randint(0, 9)}}}'),
    )


def some_amount(rng: random.Random) -> Amount:
    if rng.random() < 0.05:  # a decimal sum, or a correction below zero (tiergate/amounts.py)
        return rng.choice((Decimal("2.5"), Decimal("-0.125"), Decimal("123456789012.000001")))
    return some_int(rng)


def some_counters(rng: random.Random) -> list[Counter]:
    periods = [some_time(rng) for _ in range(rng.choice((0, 1, 1, 1, 2, 3)))]
    if rng.random() < 0.2:  # a gauge's reading: counted in every period
        periods.append(GAUGE_PERIOD_START)
    return [
        (period, code, some_amount(rng))
        for period in dict.fromkeys(periods)
        for code in rng.sample(CODES, rng.randint(1, len(CODES)))
    ]


TENANTS = ["t_000001", "t_000002", "tënant-ü", "☃-tenant", "x" * 200, *(f"t_{i:06d}" for i in range(3, 60))]


class Model:
    """What the index must answer: plain dicts."""

    def __init__(self) -> None:
        self.rows: dict[str, AccountRow] = {}
        self.counters: dict[str, list[Counter]] = {}

    def usage(self, tenant: str, period_start: str) -> dict[str, Amount]:
        wanted = (period_start, GAUGE_PERIOD_START)
        found: dict[str, Amount] = {}
        for start, code, value in sorted(self.counters.get(tenant, [])):  # the file's key order
            if start in wanted:
                found[code] = value
        return found

    def usage_rows(self) -> list[UsageRow]:
        return sorted(
            (tenant, start, code, stored(value))
            for tenant, counters in self.counters.items()
            for start, code, value in counters
        )


def assert_same(index: ReplicaIndex, model: Model) -> None:
    for tenant in [*TENANTS, "absent", "t_00000"]:
        assert index.account(tenant) == model.rows.get(tenant), tenant
        for start in {start for start, _, _ in model.counters.get(tenant, [])} | {"2026-11-01T00:00:00Z"}:
            assert index.usage(tenant, start) == model.usage(tenant, start), (tenant, start)
    assert len(index) == len(model.rows)


def test_the_packed_record_knows_every_column() -> None:
    assert AccountRow._fields == PACKED_FIELDS, (
        "teach tiergate/sidecar/replica/index.py's record the new column"
    )


@pytest.mark.parametrize("seed", range(8))
def test_the_index_answers_what_a_plain_model_holds(seed: int) -> None:
    rng = random.Random(seed)
    model, index = Model(), ReplicaIndex()
    for tenant in rng.sample(TENANTS, 40):
        if rng.random() < 0.9:
            model.rows[tenant] = some_row(rng, tenant)
        if counters := some_counters(rng):
            model.counters[tenant] = counters
    index.replace_all(sorted(model.rows.values()), model.usage_rows(), {})
    assert_same(index, model)
    for _ in range(60):  # feed batches: a few tenants each, changed, emptied or deleted
        touched = set(rng.sample(TENANTS, rng.randint(1, 6)))
        for tenant in touched:
            model.rows.pop(tenant, None)
            model.counters.pop(tenant, None)
            if rng.random() < 0.7:
                model.rows[tenant] = some_row(rng, tenant)
            if rng.random() < 0.6 and (counters := some_counters(rng)):
                model.counters[tenant] = counters
        index.replace_tenants(
            touched,
            [row for tenant, row in model.rows.items() if tenant in touched],
            [row for row in model.usage_rows() if row[0] in touched],
            {},
        )
        assert_same(index, model)


def test_many_tenants_grow_the_table_and_deletes_free_their_slots() -> None:
    rng = random.Random(7)
    index, model = ReplicaIndex(), Model()
    index.replace_all([], [], {})
    names = [f"tenant-{i}" for i in range(3000)]
    for round_ in range(4):
        batch = rng.sample(names, 1500)
        for tenant in batch:
            if round_ % 2 and tenant in model.rows:
                del model.rows[tenant]
            else:
                model.rows[tenant] = some_row(rng, tenant)
        index.replace_tenants(batch, [model.rows[t] for t in batch if t in model.rows], [], {})
        for tenant in names:
            assert index.account(tenant) == model.rows.get(tenant)
        assert len(index) == len(model.rows)


def test_rows_out_of_tenant_order_are_refused() -> None:
    rows = [some_row(random.Random(1), "b"), some_row(random.Random(2), "a")]
    with pytest.raises(ValueError, match="out of tenant order"):
        ReplicaIndex().replace_all(rows, [], {})
    with pytest.raises(ValueError, match="out of tenant order"):
        ReplicaIndex().replace_all(
            [], [("b", "2026-11-01T00:00:00Z", "x", 1), ("a", "2026-11-01T00:00:00Z", "x", 1)], {}
        )


def assert_reader_matches_file(path: Path, tenants: list[str]) -> None:
    memory, direct = ReplicaReader(path), ReplicaReader(path, read_only=True)
    try:
        for tenant in [*tenants, "absent"]:
            row = direct.account(tenant)
            assert memory.account(tenant) == row
            periods = [
                r[0]
                for r in direct._conn.execute("SELECT period_start FROM usage WHERE tenant = ?", (tenant,))
            ]
            for start in [*periods, "2026-11-01T00:00:00Z"]:
                assert memory.usage(tenant, start) == direct.usage(tenant, start)
        assert memory.count_accounts() == direct.count_accounts()
    finally:
        memory.close()
        direct.close()


def test_the_reader_answers_what_the_file_holds_after_an_import_batches_and_odd_rows(tmp_path: Path) -> None:
    rng = random.Random(11)
    path = tmp_path / "replica.db"
    writer = ReplicaWriter(open_replica(path))
    tenants = [f"t_{i:04d}" for i in range(300)]
    accounts = [
        Account.model_validate(
            {
                **some_row(rng, t)._asdict(),
                "quantity": rng.randint(0, 50),
                "version": rng.randint(0, 9),
                "addons": {},
            }
        )
        for t in tenants
        if rng.random() < 0.9
    ]
    counters = [
        UsageCounter(
            tenant=t, code=code, period_start=datetime.fromisoformat(start), value=rng.randint(0, 2**40)
        )
        for t in tenants
        for start, code, _ in some_counters(rng)
    ]
    writer.replace_all(accounts, counters, data_as_of=AS_OF, position=1)
    assert_reader_matches_file(path, tenants)

    reader = ReplicaReader(path)  # a live reader, told of each batch as the follower tells it
    for position in range(2, 12):
        changes = []
        for tenant in rng.sample(tenants, 20):
            if rng.random() < 0.3:
                changes.append(FeedChange(seq=position, kind="account", op="delete", tenant=tenant))
            elif rng.random() < 0.5:
                account = FeedAccount(tenant=tenant, tier=rng.choice(TIERS), status="active")
                changes.append(FeedChange(seq=position, kind="account", tenant=tenant, account=account))
            else:
                usage = FeedUsage(
                    tenant=tenant, code="api_calls", period_start=AS_OF, value=rng.randint(0, 99)
                )
                changes.append(FeedChange(seq=position, kind="usage", tenant=tenant, usage=usage))
        reader.applied(writer.apply_changes(changes, position=position, data_as_of=AS_OF))
        direct = ReplicaReader(path, read_only=True)
        for tenant in tenants:
            assert reader.account(tenant) == direct.account(tenant)
            assert reader.usage(tenant, "2026-11-29T12:00:00Z") == direct.usage(
                tenant, "2026-11-29T12:00:00Z"
            )
        direct.close()
    reader.close()

    # Written by hand or by an older version: not the canonical form, or beyond 64 bits.
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE accounts SET current_period_start = '2026-11-01T00:00:00+00:00', trial_end = "
            "'2026-12-01T00:00:00.25Z' WHERE tenant = ?",
            (accounts[0].tenant,),
        )
        conn.execute(
            "INSERT OR REPLACE INTO usage (tenant, code, period_start, value) VALUES (?, 'api_calls', '2026-11-01 00:00:00', ?)",
            (accounts[1].tenant, 2**62),
        )
        conn.execute(
            "INSERT OR REPLACE INTO usage (tenant, code, period_start, value) VALUES (?, 'storage_gb', '2026-11-01T00:00:00Z', '7.25')",
            (accounts[2].tenant,),
        )
    assert_reader_matches_file(path, tenants)
    writer.db.close()


def test_times_render_as_strftime_does() -> None:
    rng = random.Random(3)
    epochs = [
        0,
        -1,
        86_399,
        86_400,
        951_782_400,
        4_102_444_799,
        *(rng.randint(-(10**10), 10**10) for _ in range(5000)),
    ]
    for epoch in epochs:
        assert _format_time(epoch) == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)), epoch


def test_a_tenant_asked_again_after_a_change_gets_the_new_rows() -> None:
    """The index remembers its last lookup (a decision asks for the account, then the counters)."""
    rng = random.Random(5)
    tenant, period = "t_asked", "2026-11-01T00:00:00Z"
    index = ReplicaIndex()
    first = some_row(rng, tenant)._replace(current_period_start=period)
    index.replace_all([first], [(tenant, period, "api_calls", 3)], {})
    assert index.account(tenant) == first and index.usage(tenant, period) == {"api_calls": 3}
    second = first._replace(tier="enterprise")
    index.replace_tenants([tenant], [second], [(tenant, period, "api_calls", 4)], {})
    assert index.account(tenant) == second and index.usage(tenant, period) == {"api_calls": 4}
    index.replace_tenants([tenant], [], [], {})
    assert index.account(tenant) is None and index.usage(tenant, period) == {}
    index.replace_tenants([tenant], [first], [], {})
    assert index.account(tenant) == first
    index.replace_all([], [], {})
    assert index.account(tenant) is None


def test_a_subscription_id_finds_its_tenant_packed_or_not() -> None:
    rng = random.Random(9)
    packed = some_row(rng, "t_packed")._replace(subscription_id="sub_packed", trial_end=None)
    odd = some_row(rng, "t_odd")._replace(subscription_id="sub_odd", trial_end="2026-12-01T00:00:00+00:00")
    index = ReplicaIndex()
    index.replace_all([odd, packed], [], {})
    assert index.tenant_of_subscription("sub_packed") == "t_packed"
    assert index.tenant_of_subscription("sub_odd") == "t_odd"
    assert index.tenant_of_subscription("sub_none") is None
