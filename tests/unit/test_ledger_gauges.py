"""Gauge readings in the sidecar's pending usage: the newest replaces, until the replica holds it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tiergate.amounts import Amount
from tiergate.sidecar.usage.ledger import UsageLedger
from tiergate.sidecar.usage.outbox import Entry, Outbox
from tiergate.usage_events import GAUGE_PERIOD_START, ValidEvent

P = "2026-11-01T00:00:00Z"
KEY = ("t", "seats", GAUGE_PERIOD_START)


def overlay(ledger: UsageLedger, position: int | None = None, held: float | None = None) -> object:
    usage: dict[str, Amount] = {"seats": 9, "api_calls": 5}  # what the replica holds
    return ledger.overlay("t", P, usage, position, lambda code: held)["seats"]


def test_the_newest_reading_replaces_and_an_older_one_does_not() -> None:
    ledger = UsageLedger()
    changed: list[str] = []
    ledger.subscribe(changed.append)
    ledger.set_gauge(KEY, 100.0, 3, row=1)
    assert overlay(ledger) == 3 and changed == ["t"]
    ledger.set_gauge(KEY, 50.0, 1, row=2)  # older, accepted later: ignored
    assert overlay(ledger) == 3 and changed == ["t"]
    ledger.set_gauge(KEY, 150.0, 4, row=3)
    assert overlay(ledger) == 4
    assert overlay(ledger, held=200.0) == 9  # the replica holds a newer reading (another sidecar's)


def test_a_reading_stays_until_the_replica_reaches_its_seq() -> None:
    ledger = UsageLedger()
    ledger.set_gauge(KEY, 100.0, 3, row=1)
    ledger.confirm_gauge(KEY, 1, seq=7)
    assert overlay(ledger, position=6) == 3
    assert overlay(ledger, position=7) == 9  # the replica's value now includes it
    assert ledger.stats() == {"counters": 0, "awaiting_feed": 0}


def test_a_replaced_reading_confirmed_later_does_not_drop_the_newer_one() -> None:
    ledger = UsageLedger()
    ledger.set_gauge(KEY, 100.0, 3, row=1)
    ledger.set_gauge(KEY, 150.0, 4, row=2)
    ledger.confirm_gauge(KEY, 1, seq=7)
    ledger.drop_gauge(KEY, 1)  # e.g. refused: not the reading held
    assert overlay(ledger, position=7) == 4


async def test_a_restarted_sidecar_reloads_its_undelivered_readings(tmp_path: Path) -> None:
    at = datetime(2026, 11, 2, tzinfo=UTC)
    older = ValidEvent("t", "a", "seats", at, 6, {"seats": 6}, gauge=True)
    newer = ValidEvent("t", "b", "seats", at - timedelta(hours=1), 2, {"seats": 2}, gauge=True)
    first = UsageLedger()
    outbox = Outbox(tmp_path / "outbox.db", first, time.time, sync="normal")
    await outbox.open(None)
    await outbox.append([Entry(older, GAUGE_PERIOD_START), Entry(newer, GAUGE_PERIOD_START)])
    assert overlay(first) == 6 and outbox.backlog == 2  # "newer" in the outbox is the older reading
    await outbox.close()
    again = UsageLedger()
    reopened = Outbox(tmp_path / "outbox.db", again, time.time, sync="normal")
    await reopened.open(None)
    assert overlay(again) == 6 and reopened.backlog == 2
    await reopened.close()
