"""The `current_usage` view on both backends: this period's counters and the gauges (issue 12), and
stored events numbered in ingest order, after they commit on PostgreSQL (ADR 21)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import MirrorBackend
from tiergate.amounts import from_stored
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.store import Mirror
from tiergate.sync_daemon.mirror.usage import ingest_events, number_all_stored_events
from tiergate.sync_daemon.usage_query import stored_time
from tiergate.usage_events import GAUGE_PERIOD_START, ValidEvent


@pytest.fixture
async def mirror(mirror_backend: MirrorBackend) -> AsyncIterator[Mirror]:
    store = mirror_for(mirror_backend.location)
    await store.open()
    yield store
    await store.close()


def _event(tid: str, code: str, value: int, at: datetime, gauge: bool = False) -> ValidEvent:
    return ValidEvent(tenant="t_view", transaction_id=tid, code=code, at=at, value=value, gauge=gauge)


async def test_current_usage_shows_counters_of_this_period_and_gauges(mirror: Mirror) -> None:
    now = datetime.now(UTC)
    batch = [
        _event("c1", "api_calls", 3, now),
        _event("c2", "api_calls", 4, now),
        _event("s1", "seats", 7, now - timedelta(minutes=1), gauge=True),
        _event("s2", "seats", 5, now - timedelta(minutes=2), gauge=True),  # older: not applied
    ]
    await mirror.transact(lambda txn: ingest_events(txn, batch, now))
    rows = await mirror.read(
        lambda sql: sql.execute(
            "SELECT code, period_start, value, tier, gauge_at FROM current_usage WHERE tenant = ? ORDER BY code",
            ["t_view"],
        ).fetchall()
    )
    found = {
        code: (period_start, from_stored(value), gauge_at) for code, period_start, value, _, gauge_at in rows
    }
    assert set(found) == {"api_calls", "seats"}
    assert found["api_calls"][1:] == (7, None)
    assert found["seats"] == (GAUGE_PERIOD_START, 7, stored_time(now - timedelta(minutes=1)))


async def test_stored_events_are_numbered_in_ingest_order_once(mirror: Mirror) -> None:
    now = datetime.now(UTC)
    first = [_event(tid, "api_calls", 1, now) for tid in ("z", "a", "m")]  # not in key order
    later = now + timedelta(seconds=1)
    await mirror.transact(lambda txn: ingest_events(txn, first, now))
    await mirror.transact(lambda txn: ingest_events(txn, [_event("b", "storage_gb", 2, now)], later))

    async def seqs() -> list[tuple[int | None, str]]:
        query = "SELECT seq, transaction_id FROM usage_events ORDER BY seq, transaction_id"
        return [(seq, str(tid)) for seq, tid in await mirror.read(lambda sql: sql.execute(query).fetchall())]

    if mirror.backend == "postgresql":  # several writers: no number before a read in order
        assert {seq for seq, _ in await seqs()} == {None}
        assert await number_all_stored_events(mirror) == 4
    else:  # one writer: numbered as stored, in commit order
        assert await seqs() == [(1, "z"), (2, "a"), (3, "m"), (4, "b")]
    assert await number_all_stored_events(mirror) == 0  # each event is numbered once
    assert await seqs() == [(1, "z"), (2, "a"), (3, "m"), (4, "b")]
    value = await mirror.read(
        lambda sql: sql.execute("SELECT value FROM usage WHERE code = 'api_calls'").fetchone()[0]
    )
    assert from_stored(value) == Decimal(3)
