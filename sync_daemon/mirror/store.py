"""The sync daemon's mirror store: one writer thread for every change, read connections for the feed.

All writes run on a single-thread executor that owns the only writing connection, each as one
transaction that also appends to the `changes` log, so the event loop never blocks on SQLite and
a follower never sees a state change without its log entry. Reads (snapshot, changes, reconcile)
open their own connections: WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from sync_daemon.mirror.schema import ACCOUNTS, CHANGES, CUSTOMERS, EVENTS, MIGRATIONS, OVERRIDES
from tiergate.errors import MirrorError
from tiergate.models import ENDED_STATUSES
from tiergate.periods import parse_rfc3339, rfc3339, utc_now_text

T = TypeVar("T")

# The fields of tiergate.models.Account, in its order: what the feed carries for an account.
FEED_FIELDS = (
    "tenant",
    "tier",
    "status",
    "quantity",
    "current_period_start",
    "current_period_end",
    "trial_end",
    "cancel_at_period_end",
    "past_due_since",
    "version",
    "pending_tier",
    "pending_interval",
    "pending_at",
    "subscription_id",
    "addons",
)
_TIMES = frozenset(
    {"current_period_start", "current_period_end", "trial_end", "canceled_at", "past_due_since", "pending_at"}
)
_FLAGS = frozenset({"cancel_at_period_end", "needs_reconcile", "unmapped_price"})


@dataclass(frozen=True)
class MirrorAccount:
    """One tenant's row in the mirror (a superset of the feed's Account)."""

    tenant: str
    tier: str
    status: str
    stripe_customer_id: str | None = None
    subscription_id: str | None = None
    interval: str | None = None
    quantity: int = 1
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    past_due_since: datetime | None = None
    payment_attempts: int = 0
    payment_updated: int = 0  # `created` of the newest invoice event applied
    stripe_updated: int = 0  # `created` of the newest subscription state applied
    needs_reconcile: bool = False
    unmapped_price: bool = False
    version: int = 0
    pending_tier: str | None = None  # a scheduled downgrade (billing actions), until it takes effect
    pending_interval: str | None = None
    pending_at: datetime | None = None
    # Extra subscription items that are catalog add-ons: (add-on, quantity), sorted by add-on.
    addons: tuple[tuple[str, int], ...] = ()

    def replace(self, **changes: Any) -> MirrorAccount:
        return dataclasses.replace(self, **changes)

    def settled(self) -> MirrorAccount:
        """Drop a pending change that took effect or can no longer happen.

        Webhooks and reconciliation rewrite the subscription's fields but know nothing of
        schedules; this is where a downgrade that has started (or a subscription that ended)
        stops being shown as pending.
        """
        if self.pending_tier is None:
            return self
        arrived = self.tier == self.pending_tier and self.pending_interval in (None, self.interval)
        if arrived or self.status in ENDED_STATUSES:  # ended: a pending change on it is void
            return self.replace(pending_tier=None, pending_interval=None, pending_at=None)
        return self

    def feed(self) -> dict[str, Any]:
        """The Account document followers receive (exactly tiergate.models.Account's fields)."""
        row = self.row()
        row["addons"] = dict(self.addons)
        return {name: (bool(row[name]) if name in _FLAGS else row[name]) for name in FEED_FIELDS}

    def feed_equal(self, other: MirrorAccount | None) -> bool:
        return other is not None and {**self.feed(), "version": 0} == {**other.feed(), "version": 0}

    def row(self) -> dict[str, Any]:
        # A shallow copy: every field is immutable, and asdict's deep copy dominated snapshots.
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _TIMES:
            row[name] = rfc3339(row[name])
        for name in _FLAGS:
            row[name] = int(row[name])
        row["addons"] = json.dumps(dict(self.addons)) if self.addons else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MirrorAccount:
        values = dict(row)
        for name in _TIMES:
            values[name] = parse_rfc3339(values[name])
        for name in _FLAGS:
            values[name] = bool(values[name])
        values["addons"] = tuple(sorted(json.loads(values["addons"]).items())) if values.get("addons") else ()
        return cls(**values)


@dataclass(frozen=True)
class CustomerLink:
    customer_id: str
    tenant: str
    deleted_at: int | None = None


class MirrorTxn:
    """Reads and writes inside one writer transaction (used on the writer thread only)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db
        self.appended = 0

    def seen(self, event_id: str) -> bool:
        return self._db.execute(f"SELECT 1 FROM {EVENTS} WHERE id = ?", [event_id]).fetchone() is not None

    def record_event(self, event_id: str, event_type: str, outcome: str) -> None:
        self._db.table(EVENTS).insert(
            {"id": event_id, "type": event_type, "outcome": outcome, "received_at": utc_now_text()},
            replace=True,
        )

    def account(self, tenant: str) -> MirrorAccount | None:
        cursor = self._db.execute(f"SELECT * FROM {ACCOUNTS} WHERE tenant = ?", [tenant])
        names = [d[0] for d in cursor.description]
        found = cursor.fetchone()
        return MirrorAccount.from_row(dict(zip(names, found, strict=True))) if found else None

    def customer(self, customer_id: str) -> CustomerLink | None:
        found = self._db.execute(
            f"SELECT customer_id, tenant, deleted_at FROM {CUSTOMERS} WHERE customer_id = ?", [customer_id]
        ).fetchone()
        return CustomerLink(*found) if found else None

    def customer_of(self, tenant: str) -> str | None:
        """The tenant's Stripe customer, live ones only (a deleted customer cannot buy again)."""
        found = self._db.execute(
            f"SELECT customer_id FROM {CUSTOMERS} WHERE tenant = ? AND deleted_at IS NULL LIMIT 1", [tenant]
        ).fetchone()
        return str(found[0]) if found else None

    def link_customer(self, link: CustomerLink) -> None:
        self._db.table(CUSTOMERS).insert(dataclasses.asdict(link), replace=True)

    def put_account(self, account: MirrorAccount) -> MirrorAccount:
        """Store; bump the version and log a change only when what followers see changed."""
        account = account.settled()
        current = self.account(account.tenant)
        version = current.version if current else 0
        if not account.feed_equal(current):
            version += 1
        stored = account.replace(version=version)
        self._db.table(ACCOUNTS).insert(stored.row(), replace=True)
        if version != (current.version if current else 0):
            self._append(stored.tenant, "upsert", stored.feed())
        return stored

    def delete_account(self, tenant: str) -> bool:
        if self.account(tenant) is None:
            return False
        self._db.execute(f"DELETE FROM {ACCOUNTS} WHERE tenant = ?", [tenant])
        self._append(tenant, "delete", None)
        return True

    def trim_changes(self, keep: int, cutoff: str) -> int:
        top = _last_seq(self._db.conn)
        cursor = self._db.execute(f"DELETE FROM {CHANGES} WHERE seq <= ? OR at < ?", [top - keep, cutoff])
        return int(cursor.rowcount)

    def _append(self, tenant: str, op: str, body: dict[str, Any] | None) -> None:
        self._db.execute(
            f"INSERT INTO {CHANGES} (tenant, kind, op, body, at) VALUES (?, 'account', ?, ?, ?)",
            [tenant, op, json.dumps(body) if body is not None else None, utc_now_text()],
        )
        self.appended += 1


@dataclass(frozen=True)
class ChangeBatch:
    changes: list[dict[str, Any]]
    last_seq: int
    oldest_seq: int  # the oldest seq still retained (last_seq + 1 when the log is empty)


class Mirror:
    """The mirror file: the single writer plus read access for the feed and reconciliation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror-writer")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mirror-reader")
        self._db: sqlite_utils.Database | None = None
        self._tick = asyncio.Event()
        self.seq = 0  # the newest seq in the change log, kept by the writer

    async def open(self) -> None:
        self._db = db = await self._on_writer(lambda: _open_writer(self.path))
        self.seq = await self._on_writer(lambda: _last_seq(db.conn))

    async def close(self) -> None:
        if self._db is not None:
            await self._on_writer(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    async def transact(self, fn: Callable[[MirrorTxn], T]) -> T:
        """Run `fn` in one write transaction; followers waiting on the feed wake if it logged changes."""
        db = self._require_db()

        def run() -> tuple[T, int]:
            txn = MirrorTxn(db)
            with db.atomic():
                result = fn(txn)
            return result, _last_seq(db.conn) if txn.appended else self.seq

        result, seq = await self._on_writer(run)
        if seq != self.seq:
            self.seq = seq
            self._notify()
        return result

    def watch(self) -> asyncio.Event:
        """An event set when the next transaction that logs a change commits.

        Take it *before* reading the log: a commit between the read and the wait still wakes you.
        """
        return self._tick

    async def trim_changes(self, keep: int, max_age: timedelta) -> int:
        cutoff = rfc3339(datetime.now(UTC) - max_age)

        return await self.transact(lambda txn: txn.trim_changes(keep, cutoff or ""))

    # -- reads (own connections, beside the writer) ----------------------------------------

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._reader()
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def changes_since(self, since: int, limit: int) -> ChangeBatch:
        return await self.read(lambda conn: _changes_since(conn, since, limit))

    async def accounts(self) -> list[MirrorAccount]:
        return await self.read(_all_accounts)

    async def customers(self) -> dict[str, str]:
        return await self.read(
            lambda c: dict(c.execute(f"SELECT customer_id, tenant FROM {CUSTOMERS} WHERE deleted_at IS NULL"))
        )

    async def last_seq(self) -> int:
        return await self.read(_last_seq)

    async def snapshot(self, chunk: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Header, accounts, usage, overrides, trailer: all from one read transaction (a consistent cut).

        Followers skip record types they do not know (overrides, for a sidecar older than them).
        """
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(self._readers, self._reader)
        try:
            conn.execute("BEGIN")  # the first SELECT pins the snapshot for every later read
            seq = await loop.run_in_executor(self._readers, _last_seq, conn)
            yield {"type": "snapshot", "seq": seq, "data_as_of": utc_now_text()}
            counts = {"accounts": 0, "usage": 0, "overrides": 0}
            for kind, sql in (
                ("account", f"SELECT * FROM {ACCOUNTS} ORDER BY tenant"),
                # The feed's counters never go below zero (a correction may arrive before what it corrects).
                (
                    "usage",
                    "SELECT tenant, code, period_start, max(value, 0) AS value FROM usage ORDER BY tenant, code",
                ),
                (
                    "override",
                    f"SELECT tenant, feature, value, expires_at FROM {OVERRIDES} ORDER BY tenant, feature",
                ),
            ):
                cursor = await loop.run_in_executor(self._readers, conn.execute, sql)
                names = [d[0] for d in cursor.description]
                while rows := await loop.run_in_executor(self._readers, cursor.fetchmany, chunk):
                    for row in rows:
                        record = dict(zip(names, row, strict=True))
                        yield {"type": kind, kind: _snapshot_body(kind, record)}
                    counts[_COUNTS[kind]] += len(rows)
            yield {"type": "end", **counts}
        finally:
            await loop.run_in_executor(self._readers, conn.close)

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- plumbing ------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        # check_same_thread off: a snapshot's connection moves between reader threads, but is
        # only ever used by one at a time (each step is awaited before the next).
        return sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )

    def _notify(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _require_db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise MirrorError(f"mirror {self.path} is not open")
        return self._db

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


def _open_writer(path: Path) -> sqlite_utils.Database:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MirrorError(
            f"cannot create the directory of mirror {path} (TIERGATE_MIRROR_PATH): {exc.strerror}"
        ) from exc
    try:
        db = sqlite_utils.Database(path)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a webhook is acknowledged after commit, so the commit must survive a power cut.
        db.execute("PRAGMA synchronous=FULL")
        MIGRATIONS.apply(db)
    except sqlite3.DatabaseError as exc:
        raise MirrorError(f"mirror {path} is not a usable SQLite file: {exc}") from exc
    return db


def _last_seq(conn: sqlite3.Connection) -> int:
    found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", [CHANGES]).fetchone()
    return int(found[0]) if found else 0


def _changes_since(conn: sqlite3.Connection, since: int, limit: int) -> ChangeBatch:
    conn.execute("BEGIN")
    try:
        last = _last_seq(conn)
        oldest = conn.execute(f"SELECT min(seq) FROM {CHANGES}").fetchone()[0]
        rows = conn.execute(
            f"SELECT seq, kind, op, tenant, body FROM {CHANGES} WHERE seq > ? ORDER BY seq LIMIT ?",
            [since, limit],
        ).fetchall()
    finally:
        conn.execute("COMMIT")
    changes = []
    for seq, kind, op, tenant, body in rows:
        change: dict[str, Any] = {"seq": seq, "kind": kind, "op": op, "tenant": tenant}
        if body is not None and op == "delete":
            change.update(json.loads(body))  # a delete names its key: an override's `feature`
        elif body is not None:
            change[kind] = json.loads(body)
        changes.append(change)
    # A partial page ends at its own last seq so the follower asks again for the rest.
    page_end = changes[-1]["seq"] if len(changes) == limit else last
    return ChangeBatch(changes, page_end, oldest if oldest is not None else last + 1)


_COUNTS = {"account": "accounts", "usage": "usage", "override": "overrides"}


def _snapshot_body(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    if kind == "account":
        return MirrorAccount.from_row(record).feed()
    if kind == "override":
        return {**record, "value": json.loads(record["value"])}
    return record


def _all_accounts(conn: sqlite3.Connection) -> list[MirrorAccount]:
    cursor = conn.execute(f"SELECT * FROM {ACCOUNTS} ORDER BY tenant")
    names = [d[0] for d in cursor.description]
    return [MirrorAccount.from_row(dict(zip(names, row, strict=True))) for row in cursor]
