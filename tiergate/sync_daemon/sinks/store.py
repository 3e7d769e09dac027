"""The sinks' view of the mirror: stored events after a cursor, durable cursors, failures, resend.

A sink's cursor is the highest event `seq` it has finished with (delivered, or refused for good
and recorded in `sink_failures`). It only moves forward by compare-and-set, so a resend that
moved it back while a delivery was in flight wins, and the delivery's events go out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tiergate import exact_json
from tiergate.amounts import Amount, from_stored
from tiergate.periods import rfc3339
from tiergate.sync_daemon.mirror.schema import ACCOUNTS, USAGE_EVENTS
from tiergate.sync_daemon.mirror.store import MirrorTxn, Sql

CURSORS = "sink_cursors"
FAILURES = "sink_failures"


@dataclass(frozen=True)
class SinkEvent:
    """One stored event as a sink needs it: Lago's document as sent, plus what the mirror knows."""

    seq: int
    tenant: str
    code: str
    value: Amount  # exact (tiergate/amounts.py)
    occurred_at: str  # RFC 3339 `Z`
    document: dict[str, Any]
    subscription_id: str | None  # the tenant's Stripe subscription now (Lago needs one)
    stripe_customer_id: str | None  # the tenant's Stripe customer (meter events name it)


@dataclass(frozen=True)
class SinkPosition:
    cursor: int
    last_seq: int  # the newest stored event
    next_received_at: str | None  # when the oldest undelivered event was ingested

    @property
    def lag(self) -> int:
        return max(self.last_seq - self.cursor, 0)


def events_after(conn: Sql, cursor: int, limit: int) -> list[SinkEvent]:
    rows = conn.execute(
        f"SELECT e.seq, e.tenant, e.code, e.value, e.timestamp, e.document, e.body, e.transaction_id, "
        f"e.external_subscription_id, a.subscription_id, a.stripe_customer_id "
        f"FROM {USAGE_EVENTS} e LEFT JOIN {ACCOUNTS} a ON a.tenant = e.tenant "
        "WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
        [cursor, limit],
    ).fetchall()
    return [_sink_event(row) for row in rows]


def _sink_event(row: tuple[Any, ...]) -> SinkEvent:
    seq, tenant, code, value, timestamp, document, body, tid, sent_subscription, subscription, customer = row
    lago: dict[str, Any] = (
        exact_json.loads(document)
        if document is not None  # events ingested before documents were kept: rebuilt
        else {
            "transaction_id": tid,
            "external_customer_id": tenant,
            "code": code,
            "properties": exact_json.loads(body),
        }
    )
    if sent_subscription is not None:
        lago.setdefault("external_subscription_id", sent_subscription)
    return SinkEvent(seq, tenant, code, from_stored(value), timestamp, lago, subscription, customer)


def position(conn: Sql, sink: str) -> SinkPosition:
    cursor = read_cursor(conn, sink)
    last = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {USAGE_EVENTS}").fetchone()[0]
    row = conn.execute(f"SELECT received_at FROM {USAGE_EVENTS} WHERE seq > ? ORDER BY seq LIMIT 1", [cursor])
    nxt = row.fetchone()
    return SinkPosition(cursor, int(last), nxt[0] if nxt else None)


def read_cursor(conn: Sql, sink: str) -> int:
    row = conn.execute(f"SELECT seq FROM {CURSORS} WHERE sink = ?", [sink]).fetchone()
    return int(row[0]) if row else 0


def advance(txn: MirrorTxn, sink: str, expected: int, to: int, failures: dict[int, str]) -> bool:
    """Move the cursor from `expected` to `to` and record the events refused for good; False if
    the cursor moved meanwhile (a resend): then nothing is recorded and the batch goes out again."""
    conn = txn.sql
    txn.lock("sink", sink)  # daemons sharing a PostgreSQL mirror each run the sinks: one moves it
    if read_cursor(conn, sink) != expected:
        return False
    now = rfc3339(datetime.now(UTC))
    conn.execute(
        f"INSERT INTO {CURSORS} (sink, seq, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
        [sink, to, now],
    )
    for seq, error in failures.items():
        txn.upsert(FAILURES, {"sink": sink, "seq": seq, "error": error[:1000], "at": now}, "sink, seq")
    return True


def rewind(txn: MirrorTxn, sink: str, received_since: str) -> tuple[int, int]:
    """Send again every event ingested at or after `received_since` (RFC 3339 `Z`, microseconds);
    returns (the cursor before, the cursor now). Never moves a cursor forward."""
    conn = txn.sql
    txn.lock("sink", sink)
    before = read_cursor(conn, sink)
    first = conn.execute(
        f"SELECT min(seq) FROM {USAGE_EVENTS} WHERE received_at >= ?", [received_since]
    ).fetchone()[0]
    target = before if first is None else min(before, int(first) - 1)
    conn.execute(
        f"INSERT INTO {CURSORS} (sink, seq, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
        [sink, target, rfc3339(datetime.now(UTC))],
    )
    conn.execute(f"DELETE FROM {FAILURES} WHERE sink = ? AND seq > ?", [sink, target])
    return before, target


def failures(conn: Sql, sink: str, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
    """How many events the sink refused for good, and the newest of them."""
    total = conn.execute(f"SELECT count(*) FROM {FAILURES} WHERE sink = ?", [sink]).fetchone()[0]
    rows = conn.execute(
        f"SELECT f.seq, e.transaction_id, f.error, f.at FROM {FAILURES} f "
        f"LEFT JOIN {USAGE_EVENTS} e ON e.seq = f.seq WHERE f.sink = ? ORDER BY f.seq DESC LIMIT ?",
        [sink, limit],
    ).fetchall()
    return int(total), [{"seq": s, "transaction_id": t, "error": e, "at": a} for s, t, e, a in rows]
