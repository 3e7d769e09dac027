"""LocalDecisions' view of the sidecar's outbox: what the replica lacks is counted, the rest is not."""

from __future__ import annotations

import json
from pathlib import Path

from tiergate.sidecar.local import OutboxLedger
from tiergate.sidecar.usage.outbox import REJECTED, _connect
from tiergate.usage_events import GAUGE_PERIOD_START

P = "2026-11-01T00:00:00Z"


def test_counts_what_the_replica_lacks_as_its_position_moves(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ledger = OutboxLedger(path)
    ledger.sync(None)  # no outbox yet (the sidecar has not started): nothing, no error
    writer = _connect(path, "normal")
    rows = [  # (transaction_id, value, confirmed_seq)
        ("undelivered", 2, None),
        ("confirmed-at-5", 3, 5),
        ("rejected", 100, REJECTED),
    ]
    for tid, value, seq in rows:
        writer.execute(
            "INSERT INTO outbox (tenant, transaction_id, code, period_start, value, event, accepted_at,"
            " confirmed_seq) VALUES ('t', ?, 'api_calls', ?, ?, '{}', 0, ?)",
            (tid, P, value, seq),
        )
    changed: list[str] = []
    ledger.subscribe(changed.append)
    ledger.sync(4)  # the replica has not reached seq 5: the confirmed rows still count here
    assert ledger.total("t", "api_calls", P) == 5 and changed == ["t"]
    ledger.sync(4)  # nothing new: no work, no invalidation
    assert changed == ["t"]
    ledger.sync(5)  # the replica now holds seq 5: only the undelivered rows are extra
    assert ledger.total("t", "api_calls", P) == 2 and changed == ["t", "t"]
    writer.execute("UPDATE outbox SET confirmed_seq = 7 WHERE transaction_id = 'undelivered'")
    ledger.sync(7)
    assert ledger.total("t", "api_calls", P) == 0
    writer.close()
    ledger.close()


def test_gauge_readings_the_replica_lacks_replace_its_value(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ledger = OutboxLedger(path)
    writer = _connect(path, "normal")
    for tid, seats, at, seq in (("new", 7, 200, None), ("old", 3, 100, None), ("in-replica", 1, 50, 5)):
        writer.execute(
            "INSERT INTO outbox (tenant, transaction_id, code, period_start, value, event, accepted_at,"
            " confirmed_seq) VALUES ('t', ?, 'seats', ?, ?, ?, 0, ?)",
            (tid, GAUGE_PERIOD_START, seats, json.dumps({"timestamp": at}), seq),
        )
    ledger.sync(5)
    assert ledger.overlay("t", P, {"seats": 1}, 5)["seats"] == 7  # the newest reading, not the last row
    writer.execute("UPDATE outbox SET confirmed_seq = 6")
    ledger.sync(6)  # the replica holds them all now
    assert ledger.overlay("t", P, {"seats": 9}, 6)["seats"] == 9 and ledger.stats()["counters"] == 0
    writer.close()
    ledger.close()
