"""The mirror port on both backends: migrations, the change log written with each state change, reads."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MirrorBackend
from tiergate.models import Account
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.sqlite import SqliteMirror
from tiergate.sync_daemon.mirror.store import Mirror, MirrorAccount, MirrorTxn, Retention

ALICE = MirrorAccount(
    tenant="t_alice",
    tier="pro",
    status="active",
    subscription_id="sub_1",
    current_period_start=datetime(2026, 1, 1, tzinfo=UTC),
    current_period_end=datetime(2026, 2, 1, tzinfo=UTC),
    stripe_updated=100,
)


@pytest.fixture
async def mirror(mirror_backend: MirrorBackend) -> AsyncIterator[Mirror]:
    store = mirror_for(mirror_backend.location)
    await store.open()
    yield store
    await store.close()


async def test_sqlite_schema_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    mirror = SqliteMirror(tmp_path / "mirror.db")
    await mirror.open()
    await mirror.close()
    conn = sqlite3.connect(mirror.path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"accounts", "customers", "processed_events", "changes", "usage", "_sqlite_migrations"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    applied = [name for (name,) in conn.execute("SELECT name FROM _sqlite_migrations")]
    assert applied[0] == "m001_initial" and "m002_pending_change" in applied


async def test_feed_document_has_exactly_the_account_fields(mirror: Mirror) -> None:
    stored = await mirror.transact(lambda txn: txn.put_account(ALICE))
    document = stored.feed()
    assert list(document) == list(Account.model_fields)
    assert Account.model_validate(document).current_period_end == datetime(2026, 2, 1, tzinfo=UTC)
    assert document["current_period_start"] == "2026-01-01T00:00:00Z" and document["version"] == 1


async def test_version_and_log_move_only_when_followers_see_a_change(mirror: Mirror) -> None:
    await mirror.transact(lambda txn: txn.put_account(ALICE))
    await mirror.transact(lambda txn: txn.put_account(ALICE.replace(stripe_updated=200, payment_updated=5)))
    assert mirror.seq == 1
    stored = await mirror.transact(lambda txn: txn.put_account(ALICE.replace(quantity=3)))
    assert (stored.version, mirror.seq) == (2, 2)
    batch = await mirror.changes_since(0, 100)
    assert [c["account"]["quantity"] for c in batch.changes] == [1, 3]
    assert batch.changes[1] == {
        "seq": 2,
        "kind": "account",
        "op": "upsert",
        "tenant": "t_alice",
        "account": stored.feed(),
    }


async def test_a_failed_transaction_leaves_neither_state_nor_log(mirror: Mirror) -> None:
    def boom(txn: MirrorTxn) -> None:
        txn.put_account(ALICE)
        txn.record_event("evt_1", "x", "applied")
        raise RuntimeError("after the writes")

    with pytest.raises(RuntimeError):
        await mirror.transact(boom)
    assert await mirror.accounts() == []
    assert (await mirror.changes_since(0, 10)).changes == []
    assert not await mirror.transact(lambda txn: txn.seen("evt_1"))


async def test_delete_logs_a_delete(mirror: Mirror) -> None:
    await mirror.transact(lambda txn: txn.put_account(ALICE))
    assert await mirror.transact(lambda txn: txn.delete_account("t_alice"))
    assert not await mirror.transact(lambda txn: txn.delete_account("t_alice"))
    batch = await mirror.changes_since(1, 10)
    assert batch.changes == [{"seq": 2, "kind": "account", "op": "delete", "tenant": "t_alice"}]


async def test_paging_and_retention(mirror: Mirror) -> None:
    for n in range(1, 6):
        await mirror.transact(lambda txn, n=n: txn.put_account(ALICE.replace(quantity=n)))  # type: ignore[misc]
    page = await mirror.changes_since(0, 2)
    assert ([c["seq"] for c in page.changes], page.last_seq) == ([1, 2], 2)
    assert (await mirror.changes_since(5, 2)).last_seq == 5
    assert await mirror.trim_changes(keep=2, max_age=timedelta(days=1)) == 3
    after = await mirror.changes_since(3, 10)
    assert (after.oldest_seq, [c["seq"] for c in after.changes]) == (4, [4, 5])
    await mirror.trim_changes(keep=10, max_age=timedelta(seconds=-1))  # everything is "too old"
    empty = await mirror.changes_since(5, 10)
    assert (empty.oldest_seq, empty.last_seq) == (6, 5)  # seqs are never reused after a trim


async def test_snapshot_is_one_consistent_cut(mirror: Mirror) -> None:
    for tenant in ("a", "b", "c"):
        await mirror.transact(lambda txn, t=tenant: txn.put_account(ALICE.replace(tenant=t)))  # type: ignore[misc]
    records: list[dict[str, Any]] = []
    stream = mirror.snapshot(chunk=1)
    records.append(await anext(stream))
    # A write that commits mid-stream is not in this snapshot: it will come through the feed.
    await mirror.transact(lambda txn: txn.put_account(ALICE.replace(tenant="d")))
    records += [r async for r in stream]
    assert records[0]["seq"] == 3
    assert [r["account"]["tenant"] for r in records if r["type"] == "account"] == ["a", "b", "c"]
    assert records[-1] == {"type": "end", "accounts": 3, "usage": 0, "overrides": 0, "credits": 0}


async def test_reopen_keeps_position(mirror_backend: MirrorBackend) -> None:
    first = mirror_for(mirror_backend.location)
    await first.open()
    await first.transact(lambda txn: txn.put_account(ALICE))
    await first.close()
    again = mirror_for(mirror_backend.location)
    await again.open()
    try:
        assert again.seq == 1
        assert await again.accounts() == [ALICE.replace(version=1)]
    finally:
        await again.close()


async def test_retention_deletes_only_what_is_old_and_never_the_current_period(mirror: Mirror) -> None:
    now = datetime.now(UTC)
    old, recent = "2020-01-01T00:00:00Z", now.strftime("%Y-%m-%dT%H:%M:%SZ")
    account = ALICE.replace(current_period_start=datetime(2019, 12, 1, tzinfo=UTC))  # a long-lived period

    def fill(txn: MirrorTxn) -> None:
        txn.put_account(account)
        for event_id, at in (("evt_old", old), ("evt_new", recent)):
            txn.sql.execute(
                "INSERT INTO processed_events (id, type, outcome, received_at) VALUES (?, 'x', 'applied', ?)",
                [event_id, at],
            )
        for seq, (tid, at) in enumerate((("tx_old", old), ("tx_old2", old), ("tx_new", recent)), start=1):
            txn.sql.execute(
                "INSERT INTO usage_events (tenant, transaction_id, code, timestamp, period_start, value, "
                "body, received_at, seq) VALUES ('t_bob', ?, 'api_calls', ?, ?, 1, '{}', ?, ?)",
                [tid, at, at, at, seq],
            )
        for tenant, start in (
            ("t_bob", "2019-01-01T00:00:00Z"),
            ("t_bob", recent),
            ("t_alice", "2019-12-01T00:00:00Z"),
        ):
            txn.sql.execute(
                "INSERT INTO usage (tenant, code, period_start, value) VALUES (?, 'api_calls', ?, 5)",
                [tenant, start],
            )

    await mirror.transact(fill)
    keep = timedelta(days=30)
    deleted = await mirror.prune(Retention(processed_events=keep, usage_events=keep, closed_periods=keep))
    assert deleted == {
        "processed_events": 1,
        "usage_events": 2,
        "usage_counters": 1,
        "usage_periods": 0,
        "account_versions": 0,
        "decision_records": 0,
    }
    left = await mirror.read(
        lambda sql: sql.execute("SELECT tenant, period_start FROM usage ORDER BY tenant").fetchall()
    )
    # t_alice's counter is old but of her current period: kept
    assert [tuple(row) for row in left] == [("t_alice", "2019-12-01T00:00:00Z"), ("t_bob", recent)]
    assert not await mirror.transact(lambda txn: txn.seen("evt_old"))
    assert await mirror.transact(lambda txn: txn.seen("evt_new"))


async def test_snapshots_carry_current_period_counters_only(mirror: Mirror) -> None:
    await mirror.transact(lambda txn: txn.put_account(ALICE))  # period 2026-01-01 .. 2026-02-01

    def fill(txn: MirrorTxn) -> None:
        for start, value in (("2025-12-01T00:00:00Z", 7), ("2026-01-01T00:00:00Z", 3)):
            txn.sql.execute(
                "INSERT INTO usage (tenant, code, period_start, value) VALUES ('t_alice', 'api_calls', ?, ?)",
                [start, value],
            )

    await mirror.transact(fill)
    usage = [r["usage"] async for r in mirror.snapshot() if r["type"] == "usage"]
    assert usage == [
        {"tenant": "t_alice", "code": "api_calls", "period_start": "2026-01-01T00:00:00Z", "value": 3}
    ]
