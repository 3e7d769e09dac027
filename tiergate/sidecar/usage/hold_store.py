"""Holds as rows of the outbox file (table `holds`, migration m005 in outbox.py): the `Hold`
record and its SQL, run inside `Outbox.transact` / `Outbox.read` on the outbox's connection."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tiergate.errors import ConflictError
from tiergate.periods import rfc3339
from tiergate.sidecar.usage.ledger import Key
from tiergate.sidecar.usage.outbox import Entry, insert_entries

HELD, SETTLED, RELEASED, EXPIRED = "held", "settled", "released", "expired"


@dataclass
class Hold:
    hold_id: str
    tenant: str
    transaction_id: str
    code: str
    period_start: str
    quantity: int
    created_at: float
    expires_at: float
    state: str = HELD
    settle_requested: int | None = None  # the quantity the settle asked for
    settled_quantity: int | None = None  # the quantity it recorded (overage: cap may lower it)
    ended_at: float | None = None
    # Resolved once the hold's row is committed: a replay of its creation waits for it.
    committed: asyncio.Future[Hold] | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> Key:
        return (self.tenant, self.code, self.period_start)

    def body(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "transaction_id": self.transaction_id,
            "tenant": self.tenant,
            "feature": self.code,
            "held": self.quantity,
            "state": self.state,
            "expires_at": rfc3339_of(self.expires_at),
            "settled_quantity": self.settled_quantity,
        }


def rfc3339_of(at: float) -> str | None:
    return rfc3339(datetime.fromtimestamp(at, UTC))


_COLUMNS = (
    "hold_id, tenant, transaction_id, code, period_start, quantity, created_at, expires_at, "
    "state, settle_requested, settled_quantity, ended_at"
)


def _row_hold(row: Sequence[Any]) -> Hold:
    return Hold(*row)


def load_active(conn: sqlite3.Connection) -> list[Hold]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM holds WHERE state = 'held'").fetchall()
    return [_row_hold(row) for row in rows]


def held_totals(conn: sqlite3.Connection) -> list[tuple[Key, int]]:
    """What the active holds take, per counter: for a reader of the sidecar's outbox in another
    process (tiergate/sidecar/local.py); nothing from a file the sidecar has not migrated yet."""
    try:
        rows = conn.execute(
            "SELECT tenant, code, period_start, sum(quantity) FROM holds WHERE state = 'held' GROUP BY 1, 2, 3"
        ).fetchall()
    except sqlite3.OperationalError:  # no holds table yet
        return []
    return [((tenant, code, period_start), int(total)) for tenant, code, period_start, total in rows]


def load_one(conn: sqlite3.Connection, where: str, args: tuple[str, ...]) -> Hold | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM holds WHERE {where}", args).fetchone()
    return None if row is None else _row_hold(row)


def insert_hold(conn: sqlite3.Connection, hold: Hold, named: bool) -> Hold | None:
    """Write the hold; with the caller's own id, first the hold that already has it (returned,
    nothing written), or a 409 when a usage event has it."""
    if named:
        earlier = load_one(conn, "tenant = ? AND transaction_id = ?", (hold.tenant, hold.transaction_id))
        if earlier is not None:
            return earlier
        taken = conn.execute(
            "SELECT 1 FROM outbox WHERE tenant = ? AND transaction_id = ? "
            "UNION ALL SELECT 1 FROM pruned_reservations WHERE tenant = ? AND transaction_id = ?",
            (hold.tenant, hold.transaction_id) * 2,
        ).fetchone()
        if taken is not None:
            raise ConflictError(
                f"transaction_id {hold.transaction_id!r} is already a usage event's: a hold settles "
                "under its own id (use a new transaction_id)",
                field="transaction_id",
            )
    values = (
        hold.hold_id, hold.tenant, hold.transaction_id, hold.code, hold.period_start, hold.quantity,
        hold.created_at, hold.expires_at, hold.state, hold.settle_requested, hold.settled_quantity, hold.ended_at,
    )  # fmt: skip
    conn.execute(f"INSERT INTO holds ({_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values)
    return None


def settle_rows(
    conn: sqlite3.Connection, ended: Hold, entries: Sequence[Entry], now: float
) -> list[int | None]:
    """The hold's events and its end, one transaction (inside `Outbox.transact`)."""
    ids = insert_entries(conn, entries, now)
    if ids and ids[0] is None:  # raised inside the transaction: it rolls back
        raise ConflictError(
            f"transaction_id {ended.transaction_id!r} of hold {ended.hold_id!r} was recorded by "
            "another usage event meanwhile: nothing settled (release the hold)",
            field="transaction_id",
        )
    end_holds(conn, [ended])
    return ids


def end_holds(conn: sqlite3.Connection, holds: Sequence[Hold]) -> None:
    for hold in holds:
        cursor = conn.execute(
            "UPDATE holds SET state = ?, settle_requested = ?, settled_quantity = ?, ended_at = ? "
            "WHERE hold_id = ? AND state = 'held'",
            (hold.state, hold.settle_requested, hold.settled_quantity, hold.ended_at, hold.hold_id),
        )
        if cursor.rowcount != 1:
            raise ConflictError(f"hold {hold.hold_id!r} is no longer held in the outbox", field="hold_id")


def set_expiry(conn: sqlite3.Connection, hold_id: str, expires_at: float) -> None:
    conn.execute(
        "UPDATE holds SET expires_at = ? WHERE hold_id = ? AND state = 'held'", (expires_at, hold_id)
    )
