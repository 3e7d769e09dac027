"""LocalDecisions' view of the sidecar's outbox: what the replica lacks is counted, the rest is not."""

from __future__ import annotations

from pathlib import Path

from sidecar.local import OutboxLedger
from sidecar.usage.outbox import REJECTED, _connect

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
