"""The outbound webhook queue in the mirror: events, one delivery row per endpoint, the delivery log.

`enqueue` runs inside the `Mirror.transact` of the change that causes the event, so an event is
never lost (committed with its cause) and never made up (rolled back with it).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiergate.periods import utc_now_text
from tiergate.sync_daemon.mirror.schema import OUTBOUND_DELIVERIES, OUTBOUND_EVENTS, OUTBOUND_ONCE
from tiergate.sync_daemon.mirror.store import MirrorTxn, Sql


@dataclass(frozen=True)
class Due:
    event_id: str
    endpoint: str
    body: bytes
    attempts: int


def enqueue(
    txn: MirrorTxn, endpoints: Sequence[str], kind: str, tenant: str | None, data: dict[str, Any]
) -> str | None:
    """Store the event and a pending delivery per endpoint; None (nothing stored) without endpoints."""
    if not endpoints:
        return None
    conn = txn.sql
    event_id = f"evt_tg_{uuid.uuid4().hex}"
    body = {"id": event_id, "type": kind, "created": int(time.time()), "data": data}
    conn.execute(
        f"INSERT INTO {OUTBOUND_EVENTS} (id, type, tenant, body, created_at) VALUES (?, ?, ?, ?, ?)",
        (event_id, kind, tenant, json.dumps(body, separators=(",", ":")), utc_now_text()),
    )
    for endpoint in endpoints:
        conn.execute(
            f"INSERT INTO {OUTBOUND_DELIVERIES} (event_id, endpoint, status, next_attempt_at) "
            "VALUES (?, ?, 'pending', ?)",
            [event_id, endpoint, time.time()],
        )
    return event_id


def first_time(txn: MirrorTxn, key: str) -> bool:
    """True the first time `key` is seen (in this transaction's commit): an event sent once only."""
    cursor = txn.sql.execute(
        f"INSERT INTO {OUTBOUND_ONCE} (key, at) VALUES (?, ?) ON CONFLICT DO NOTHING", [key, utc_now_text()]
    )
    return cursor.rowcount == 1


def due(conn: Sql, now: float, limit: int) -> list[Due]:
    rows = conn.execute(
        f"SELECT d.event_id, d.endpoint, e.body, d.attempts FROM {OUTBOUND_DELIVERIES} d "
        f"JOIN {OUTBOUND_EVENTS} e ON e.id = d.event_id "
        "WHERE d.status = 'pending' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
        [now, limit],
    ).fetchall()
    return [Due(event_id, endpoint, body.encode(), attempts) for event_id, endpoint, body, attempts in rows]


def claim(txn: MirrorTxn, item: Due, now: float, until: float) -> bool:
    """Take `item` for one attempt: push its next attempt to `until` if it is still due, so no
    other daemon sending the same queue finds it due meanwhile. False: another daemon took it (or
    it was delivered since it was read). A daemon that dies holding a claim leaves the delivery
    pending: it is due again at `until`."""
    cursor = txn.sql.execute(
        f"UPDATE {OUTBOUND_DELIVERIES} SET next_attempt_at = ? "
        "WHERE event_id = ? AND endpoint = ? AND status = 'pending' AND next_attempt_at <= ?",
        [until, item.event_id, item.endpoint, now],
    )
    return bool(cursor.rowcount == 1)


def next_due(conn: Sql) -> float | None:
    row = conn.execute(
        f"SELECT min(next_attempt_at) FROM {OUTBOUND_DELIVERIES} WHERE status = 'pending'"
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def record_attempt(
    txn: MirrorTxn, due: Due, *, status: str, http_status: int | None, error: str | None, next_at: float
) -> None:
    txn.sql.execute(
        f"UPDATE {OUTBOUND_DELIVERIES} SET status = ?, attempts = attempts + 1, next_attempt_at = ?, "
        "last_status = ?, last_error = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END "
        "WHERE event_id = ? AND endpoint = ?",
        [status, next_at, http_status, error, status, utc_now_text(), due.event_id, due.endpoint],
    )


def delivery_log(conn: Sql, status: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest deliveries (optionally of one status), with their event."""
    where = "WHERE d.status = ?" if status else ""
    rows = conn.execute(
        f"SELECT d.event_id, e.type, e.tenant, d.endpoint, d.status, d.attempts, d.last_status, d.last_error, "
        f"d.delivered_at, e.created_at FROM {OUTBOUND_DELIVERIES} d JOIN {OUTBOUND_EVENTS} e ON e.id = d.event_id "
        f"{where} ORDER BY e.created_at DESC, d.event_id DESC LIMIT ?",
        [status, limit] if status else [limit],
    ).fetchall()
    names = (
        "event_id",
        "type",
        "tenant",
        "endpoint",
        "status",
        "attempts",
        "last_status",
        "last_error",
        "delivered_at",
        "created_at",
    )
    return [dict(zip(names, row, strict=True)) for row in rows]
