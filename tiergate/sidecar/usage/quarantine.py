"""The outbox's quarantine: events no delivery could carry, kept for the operator (SQL, pure of asyncio).

A row is quarantined when the daemon refuses it as a batch of one (413 too large, 400/422
unreadable): it no longer blocks the rows behind it, it is never counted, and it stays in the
outbox file (never pruned) until an operator re-delivers it (`tiergate usage redeliver`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from tiergate.amounts import Amount, from_stored

QUARANTINED = -2  # the outbox's confirmed_seq for a quarantined row
Key = tuple[str, str, str]


def load(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """How many rows are quarantined, and when the oldest undelivered row was accepted."""
    count = conn.execute("SELECT count(*) FROM outbox WHERE confirmed_seq = ?", (QUARANTINED,)).fetchone()[0]
    oldest = conn.execute("SELECT min(accepted_at) FROM outbox WHERE confirmed_seq IS NULL").fetchone()[0]
    return int(count), oldest


def mark(conn: sqlite3.Connection, row_id: int, error: str, now: float) -> None:
    conn.execute(
        "UPDATE outbox SET confirmed_seq = ?, quarantine_error = ?, quarantined_at = ? WHERE id = ?",
        (QUARANTINED, error[:1000], now, row_id),
    )


def listing(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, tenant, transaction_id, code, value, length(event), accepted_at, quarantined_at, "
        "quarantine_error FROM outbox WHERE confirmed_seq = ? ORDER BY id LIMIT ?",
        (QUARANTINED, limit),
    ).fetchall()
    names = ("id", "tenant", "transaction_id", "code", "value", "bytes", "accepted_at", "quarantined_at")
    return [{**dict(zip(names, row[:-1], strict=True)), "error": row[-1]} for row in rows]


def release(conn: sqlite3.Connection, ids: Sequence[int] | None) -> list[tuple[int, Key, Amount, float]]:
    """Back in line for delivery: (id, key, value, accepted_at) of each released row."""
    where, params = "confirmed_seq = ?", [QUARANTINED]
    if ids is not None:
        if not ids:
            return []
        where += f" AND id IN ({','.join('?' * len(ids))})"
        params += list(ids)
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "UPDATE outbox SET confirmed_seq = NULL, quarantine_error = NULL, quarantined_at = NULL "
            f"WHERE {where} RETURNING id, tenant, code, period_start, value, accepted_at",
            params,
        ).fetchall()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return [(i, (t, c, p), from_stored(v), float(a)) for i, t, c, p, v, a in rows]
