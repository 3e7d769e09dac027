"""The outbox keeps decimal values exactly across a restart, and its migration keeps old rows."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import sqlite_utils

from tiergate.sidecar.usage.ledger import UsageLedger
from tiergate.sidecar.usage.outbox import MIGRATIONS, Entry, Outbox
from tiergate.usage_events import ValidEvent

P = "2026-11-01T00:00:00Z"
AT = datetime(2026, 11, 2, tzinfo=UTC)


def entry(tid: str, value: int | Decimal) -> Entry:
    return Entry(ValidEvent("t", tid, "storage_gb", AT, value, {"gb": str(value)}), P)


async def test_tenths_and_a_correction_are_exact_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = UsageLedger()
    outbox = Outbox(path, first, time.time, sync="normal")
    await outbox.open(None)
    await outbox.append([entry(f"tenth-{n}", Decimal("0.1")) for n in range(700)])
    await outbox.append([entry("whole", 5), entry("fix", Decimal("-0.35"))])
    assert first.total("t", "storage_gb", P) == Decimal("74.65")
    rows = await outbox.next_batch(1000)
    assert rows[0].value == Decimal("0.1") and rows[-1].value == Decimal("-0.35")
    await outbox.close()

    again = UsageLedger()  # a restarted sidecar rebuilds its pending totals from the file
    reopened = Outbox(path, again, time.time, sync="normal")
    await reopened.open(None)
    assert again.total("t", "storage_gb", P) == Decimal("74.65")
    reopened.confirm(await reopened.next_batch(1000), 9, set())
    again.settle(9)
    assert again.total("t", "storage_gb", P) == 0  # exactly nothing left over
    await reopened.close()


async def test_the_migration_keeps_whole_values_of_an_older_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    db = sqlite_utils.Database(path)
    MIGRATIONS.apply(db, stop_before="m003_exact_values")
    db.execute(
        "INSERT INTO outbox (tenant, transaction_id, code, period_start, value, event, accepted_at) "
        "VALUES ('t', 'old', 'storage_gb', ?, 12, '{}', 0)",
        (P,),
    )
    db.close()
    ledger = UsageLedger()
    outbox = Outbox(path, ledger, time.time, sync="normal")
    await outbox.open(None)
    assert ledger.total("t", "storage_gb", P) == 12
    await outbox.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT typeof(value) FROM outbox").fetchone() == ("integer",)
    conn.close()
