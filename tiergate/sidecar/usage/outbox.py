"""The usage outbox: accepted events on local disk until the daemon has counted them.

One SQLite file (`TIERGATE_OUTBOX_PATH`, WAL). With `synchronous=FULL` (the default: a 202
promises the event survives a crash or power cut) it is written by one thread: appends from
concurrent requests are group-committed, while one transaction is being written and fsynced the
next requests queue up and share the following commit. With `synchronous=NORMAL` (no fsync per
commit: survives the process dying, not the machine) a commit costs ~15 µs, less than the hop to
that thread and back, so an append commits on the event loop's thread, on its own connection,
when the write lock is free at once; when another writer holds it (delivery marking rows, a
prune, a CLI) it falls back to the writer thread, which waits. The in-memory read-your-writes
totals (`UsageLedger`) are updated in the same loop step that learns of the commit, before any
caller is answered and before delivery can read the rows (it only reads up to `watermark`).

A reservation sent with its own `transaction_id` keeps its id after the row is pruned: a compact
record (tenant, id, code, quantity) stays for `TIERGATE_OUTBOX_RESERVATION_ID_RETENTION_S`, so a
replay after the retention is still recognised (answered `replayed`, or a 409) and counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import sqlite_utils
import structlog

from tiergate import exact_json
from tiergate.amounts import Amount, add, from_stored, stored, total
from tiergate.errors import OutboxError
from tiergate.sidecar.usage import quarantine
from tiergate.sidecar.usage.ledger import Key, UsageLedger
from tiergate.usage_events import GAUGE_PERIOD_START, ValidEvent, is_gauge

log = structlog.get_logger("tiergate.outbox")

T = TypeVar("T")
MIGRATIONS = sqlite_utils.Migrations("tiergate_outbox")
BUSY_TIMEOUT_S = 10.0  # a CLI reading the outbox must not make a commit fail
REJECTED = -1  # confirmed_seq of an event the daemon refused: kept for the operator, never counted
CHECKPOINT_EVERY = 256  # commits on the loop's connection between two checkpoints on the thread


@MIGRATIONS()
def m001_outbox(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            tenant TEXT NOT NULL,
            transaction_id TEXT NOT NULL,
            code TEXT NOT NULL,
            period_start TEXT NOT NULL,
            value INTEGER NOT NULL,
            event TEXT NOT NULL,
            accepted_at REAL NOT NULL,
            confirmed_seq INTEGER,
            UNIQUE (tenant, transaction_id)
        )"""
    )
    db.execute("CREATE INDEX outbox_undelivered ON outbox (id) WHERE confirmed_seq IS NULL")


@MIGRATIONS()
def m002_quarantine(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE outbox ADD COLUMN quarantine_error TEXT")
    db.execute("ALTER TABLE outbox ADD COLUMN quarantined_at REAL")


@MIGRATIONS()
def m003_exact_values(db: sqlite_utils.Database) -> None:
    # Exact values (tiergate/amounts.py): a column without a declared type keeps an INTEGER as an
    # integer and a decimal's TEXT as text, where INTEGER affinity would turn "2.5" into a REAL.
    db.execute("ALTER TABLE outbox ADD COLUMN exact_value NOT NULL DEFAULT 0")
    db.execute("UPDATE outbox SET exact_value = value")
    db.execute("ALTER TABLE outbox DROP COLUMN value")
    db.execute("ALTER TABLE outbox RENAME COLUMN exact_value TO value")


@MIGRATIONS()
def m004_reservation_ids(db: sqlite_utils.Database) -> None:
    # The first event of a reservation sent with the caller's own transaction id carries the
    # reservation's quantity; when the row is pruned, its id survives in `pruned_reservations`.
    db.execute("ALTER TABLE outbox ADD COLUMN reserved_quantity")
    db.execute(
        """CREATE TABLE pruned_reservations (
            tenant TEXT NOT NULL,
            transaction_id TEXT NOT NULL,
            code TEXT NOT NULL,
            quantity NOT NULL,
            pruned_at REAL NOT NULL,
            PRIMARY KEY (tenant, transaction_id)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX pruned_reservations_age ON pruned_reservations (pruned_at)")


@MIGRATIONS()
def m005_holds(db: sqlite_utils.Database) -> None:
    # Holds (tiergate/sidecar/usage/holds.py): a settle writes its usage events and the hold's
    # new state in one transaction, so a crash leaves either the hold or its events, never both.
    db.execute(
        """CREATE TABLE holds (
            hold_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            transaction_id TEXT NOT NULL,
            code TEXT NOT NULL,
            period_start TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            state TEXT NOT NULL,
            settle_requested INTEGER,
            settled_quantity INTEGER,
            ended_at REAL,
            UNIQUE (tenant, transaction_id)
        )"""
    )
    db.execute("CREATE INDEX holds_active ON holds (expires_at) WHERE state = 'held'")
    db.execute("CREATE INDEX holds_ended ON holds (ended_at) WHERE state != 'held'")


@dataclass(frozen=True)
class Entry:
    """An event and the period this sidecar counts it in."""

    event: ValidEvent
    period_start: str
    # Set on the first event of a reservation whose id the caller chose (it may replay it):
    # the whole reservation's quantity, remembered past the row's pruning.
    reserved_quantity: int | None = None

    @property
    def key(self) -> Key:
        return (self.event.tenant, self.event.code, self.period_start)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    key: Key
    value: Amount
    transaction_id: str
    text: str  # the event as the compact JSON delivered, exactly as accepted
    accepted_at: float

    @property
    def size(self) -> int:
        return len(self.text.encode())


@dataclass(frozen=True, slots=True)
class Reserved:
    """A reservation as committed: the metric's code and the quantity reserved."""

    code: str
    quantity: Amount


@dataclass
class _Append:
    entries: Sequence[Entry]
    # Already counted in UsageLedger by the caller (check-and-reserve). A reservation is also all
    # or nothing: when its first event's id is in the outbox, none of its events is written.
    reserved: bool
    future: asyncio.Future[list[bool]]


class Outbox:
    def __init__(
        self,
        path: Path,
        pending: UsageLedger,
        clock: Callable[[], float],
        *,
        sync: str = "full",
        reservation_id_retention_s: float = 7 * 86400.0,
    ) -> None:
        self.path = path
        self.sync = sync
        self.reservation_id_retention_s = reservation_id_retention_s
        self.pending = pending
        self.clock = clock
        self.watermark = 0  # the highest row id whose pending accounting is done
        self.backlog = 0  # rows not yet confirmed by the daemon
        self.quarantined = 0  # rows set aside: no delivery could carry them
        self.oldest_accepted_at: float | None = None  # of the oldest undelivered row
        self.ready = asyncio.Event()  # set when rows were appended: delivery wakes up
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        self._conn: sqlite3.Connection | None = None
        # synchronous=NORMAL: the event loop's own connection (commits without the thread hop).
        self._loop_conn: sqlite3.Connection | None = None
        self._loop_commits = 0
        self.loop_commits_deferred = 0  # appends that found the write lock taken: went to the thread
        self._checkpoint: asyncio.Task[None] | None = None
        self._queue: list[_Append] = []
        self._flusher: asyncio.Task[None] | None = None

    async def open(self, position: int | None) -> None:
        """Open the file and rebuild the pending totals for what the replica at `position` lacks."""
        self._conn = await self._run(lambda: _connect(self.path, self.sync))
        conn = self._conn
        if self.sync == "normal":
            self._loop_conn = _connect_loop(self.path)
        unconfirmed, confirmed, top, backlog = await self._run(lambda: _load(conn, position))
        self.pending.add_all(unconfirmed)
        for seq, deltas in confirmed.items():
            self.pending.add_all(deltas.items())
            self.pending.confirm(seq, deltas)
        gauges = await self._run(lambda: _load_gauges(conn, position))
        for key, at, value, row, gauge_seq in gauges:
            self.pending.set_gauge(key, at, value, row)
            if gauge_seq is not None:
                self.pending.confirm_gauge(key, row, gauge_seq)
        backlog += sum(1 for *_, gauge_seq in gauges if gauge_seq is None)
        self.watermark, self.backlog = top, backlog
        self.quarantined, self.oldest_accepted_at = await self._run(lambda: quarantine.load(conn))
        log.info(
            "outbox_opened",
            path=str(self.path),
            backlog=backlog,
            awaiting_feed=len(confirmed),
            quarantined=self.quarantined,
        )

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def append(self, entries: Sequence[Entry], *, reserved: bool = False) -> list[bool]:
        """Commit durably; per entry True when new, False for a transaction id already in the outbox."""
        if (
            self._loop_conn is not None
            and not self._queue
            and (self._flusher is None or self._flusher.done())
        ):
            flags = self._append_on_loop(entries, reserved)
            if flags is not None:
                return flags
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Append(entries, reserved, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="outbox-flush")
        return await asyncio.shield(future)

    async def reservation(self, tenant: str, transaction_id: str) -> Reserved | None:
        """What a reservation with this id holds in the outbox (None: no event has the id): its
        code, and its quantity (a count metric's N units are the events `id`, `id/2` .. `id/N`)."""
        if self._loop_conn is not None:  # synchronous=NORMAL: a read on the loop, no thread hop
            try:
                return _reservation(self._loop_conn, tenant, transaction_id)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
        conn = self._require()
        return await self._run(lambda: _reservation(conn, tenant, transaction_id))

    async def next_batch(self, limit: int, max_bytes: int | None = None) -> list[OutboxRow]:
        """The oldest undelivered rows: at most `limit`, and at most `max_bytes` of events unless
        the first row alone is larger (it then travels alone)."""
        conn, top = self._require(), self.watermark
        rows = await self._run(lambda: _undelivered(conn, top, limit))
        self.oldest_accepted_at = rows[0].accepted_at if rows else None
        if max_bytes is None:
            return rows
        return _bounded(rows, max_bytes)

    def oldest_age(self) -> float:
        """Seconds the oldest undelivered event has waited (0 with nothing undelivered)."""
        if self.backlog <= 0 or self.oldest_accepted_at is None:
            return 0.0
        return max(0.0, self.clock() - self.oldest_accepted_at)

    def confirm(self, rows: Sequence[OutboxRow], seq: int, rejected: set[int]) -> None:
        """The daemon counted the rows at or below `seq` (or refused them): tell the pending totals.

        Call it in the loop step that read the answer, then `persist_answer`: the replica reaching
        `seq` can never find the rows still unconfirmed. A crash before `persist_answer` re-sends
        them and the daemon answers "duplicate" (they over-count locally until then, never under).
        """
        deltas: dict[Key, Amount] = {}
        for row in rows:
            if is_gauge(row.key[2]) and row.id in rejected:
                self.pending.drop_gauge(row.key, row.id)
            elif is_gauge(row.key[2]):
                self.pending.confirm_gauge(row.key, row.id, seq)
            elif row.id in rejected:
                self.pending.remove(row.key, row.value)
            else:
                deltas[row.key] = add(deltas.get(row.key, 0), row.value)
        self.pending.confirm(seq, deltas)
        self.backlog -= len(rows)

    def set_aside(self, row: OutboxRow) -> None:
        """No delivery can carry `row`: uncount it here (call `persist_quarantine` next)."""
        if is_gauge(row.key[2]):
            self.pending.drop_gauge(row.key, row.id)
        else:
            self.pending.remove(row.key, row.value)
        self.backlog -= 1
        self.quarantined += 1

    async def persist_quarantine(self, row: OutboxRow, error: str) -> None:
        conn, now = self._require(), self.clock()
        await self._run(lambda: quarantine.mark(conn, row.id, error, now))

    async def list_quarantined(self, limit: int) -> list[dict[str, Any]]:
        conn = self._require()
        return await self._run(lambda: quarantine.listing(conn, limit))

    async def redeliver(self, ids: Sequence[int] | None) -> int:
        """Put quarantined rows (`ids`, or all with None) back in line; returns how many."""
        conn = self._require()
        released = await self._run(lambda: quarantine.release(conn, ids))
        for row_id, key, value, accepted_at in released:
            if is_gauge(key[2]):
                self.pending.set_gauge(key, accepted_at, value, row_id)
            else:
                self.pending.add(key, value)
            if self.oldest_accepted_at is None or accepted_at < self.oldest_accepted_at:
                self.oldest_accepted_at = accepted_at
        self.backlog += len(released)
        self.quarantined -= len(released)
        if released:
            self.ready.set()
        return len(released)

    async def persist_answer(self, rows: Sequence[OutboxRow], seq: int, rejected: set[int]) -> None:
        conn = self._require()
        await self._run(lambda: _mark(conn, rows, seq, rejected))

    async def prune(self, position: int | None, retention_s: float) -> int:
        """Forget rows the replica includes, once older than the retention (kept for deduplication);
        a reservation with the caller's own id leaves a compact record of it, itself forgotten after
        `reservation_id_retention_s`."""
        if position is None:
            return 0
        conn, now = self._require(), self.clock()
        cutoff, ids_cutoff = now - retention_s, now - self.reservation_id_retention_s
        return await self._run(lambda: _prune(conn, position, cutoff, now, ids_cutoff))

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` in one write transaction on the writer thread (rolled back when it raises); for
        the holds, which commit their own rows beside usage events (`insert_entries`). With
        synchronous=NORMAL on the loop's own connection when the write lock is free, as appends do."""
        if (
            self._loop_conn is not None
            and not self._queue
            and (self._flusher is None or self._flusher.done())
        ):
            try:
                result = _transaction(self._loop_conn, fn)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
                self.loop_commits_deferred += 1
            else:
                self._loop_committed()
                return result
        conn = self._require()
        return await self._run(lambda: _transaction(conn, fn))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._require()
        return await self._run(lambda: fn(conn))

    def accepted(self, entries: Sequence[Entry], ids: Sequence[int | None]) -> None:
        """Entries committed by `transact` (with `insert_entries`): count them and wake delivery."""
        self._account(entries, False, iter(ids))
        self.ready.set()

    # -- commits on the loop's thread (synchronous=NORMAL) ----------------------------------------

    def _append_on_loop(self, entries: Sequence[Entry], reserved: bool) -> list[bool] | None:
        """Commit here and now; None when another connection holds the write lock (then the
        writer thread, which waits for it, commits instead)."""
        conn = self._loop_conn
        assert conn is not None
        try:
            ids = _insert(conn, [(entries, reserved)], self.clock())
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                self.loop_commits_deferred += 1
                return None
            self._write_failed(exc, [(entries, reserved)])
        except Exception as exc:
            self._write_failed(exc, [(entries, reserved)])
        flags = self._account(entries, reserved, iter(ids))
        self.ready.set()
        self._loop_committed()
        return flags

    def _loop_committed(self) -> None:
        self._loop_commits += 1
        if self._loop_commits % CHECKPOINT_EVERY == 0 and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            # The loop's connection never checkpoints (that would fsync on the loop): the thread does.
            self._checkpoint = asyncio.create_task(self._run_checkpoint(), name="outbox-checkpoint")

    def _write_failed(self, exc: Exception, groups: Sequence[tuple[Sequence[Entry], bool]]) -> NoReturn:
        log.error("outbox_write_failed", error=str(exc), path=str(self.path))
        for entries, reserved in groups:
            if reserved:
                for entry in entries:
                    self.pending.remove(entry.key, entry.event.value)
        raise OutboxError(f"usage outbox {self.path} could not commit: {exc}") from exc

    async def _run_checkpoint(self) -> None:
        conn = self._require()
        try:
            await self._run(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except sqlite3.Error as exc:  # the next one tries again; the WAL only grows meanwhile
            log.warning("outbox_checkpoint_failed", error=str(exc), path=str(self.path))

    # -- group commit ------------------------------------------------------------------------

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            groups = [(item.entries, item.reserved) for item in batch]
            conn, now = self._require(), self.clock()
            try:
                ids = await self._run(functools.partial(_insert, conn, groups, now))
            except Exception as exc:  # the disk failed us: nobody gets a 202
                log.error("outbox_write_failed", error=str(exc), path=str(self.path))
                self._fail(batch, OutboxError(f"usage outbox {self.path} could not commit: {exc}"))
                continue
            self._committed(batch, iter(ids))

    def _committed(self, batch: list[_Append], ids: Any) -> None:
        for item in batch:
            flags = self._account(item.entries, item.reserved, ids)
            if not item.future.done():
                item.future.set_result(flags)
        self.ready.set()

    def _account(self, entries: Sequence[Entry], reserved: bool, ids: Any) -> list[bool]:
        """The pending totals and the counters after a commit; per entry True when written."""
        flags = []
        for entry in entries:
            row_id = next(ids)
            if row_id is not None:
                self.watermark = max(self.watermark, row_id)
                if self.backlog == 0:
                    self.oldest_accepted_at = self.clock()
                self.backlog += 1
                if is_gauge(entry.period_start):
                    self.pending.set_gauge(entry.key, entry.event.at.timestamp(), entry.event.value, row_id)
                elif not reserved:
                    self.pending.add(entry.key, entry.event.value)
            elif reserved:  # a replayed reservation: the first one is the one that counts
                self.pending.remove(entry.key, entry.event.value)
            flags.append(row_id is not None)
        return flags

    def _fail(self, batch: list[_Append], error: OutboxError) -> None:
        for item in batch:
            if item.reserved:
                for entry in item.entries:
                    self.pending.remove(entry.key, entry.event.value)
            if not item.future.done():
                item.future.set_exception(error)

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"usage outbox {self.path} is not open")
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


def _connect(path: Path, sync: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite_utils.Database(path)
        db.execute("PRAGMA journal_mode=WAL")
        MIGRATIONS.apply(db)
        db.close()
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        # FULL: a 202 is a promise that survives a power cut (an fsync per commit). NORMAL in WAL
        # mode survives the process being killed, not the machine losing power.
        conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    except sqlite3.DatabaseError as exc:
        raise OutboxError(f"usage outbox {path} is not a usable SQLite file: {exc}") from exc
    return conn


def _connect_loop(path: Path) -> sqlite3.Connection:
    """The event loop's connection (synchronous=NORMAL only; the file is migrated already): it
    never waits for the write lock (timeout 0: busy goes to the thread) and never checkpoints."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


_INSERT = (
    "INSERT OR IGNORE INTO outbox "
    "(tenant, transaction_id, code, period_start, value, event, accepted_at, reserved_quantity) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert(
    conn: sqlite3.Connection, groups: Sequence[tuple[Sequence[Entry], bool]], now: float
) -> list[int | None]:
    """One transaction for every group; per entry its new row id, or None when not written (a
    transaction id already there; every event of an all-or-nothing group whose first id is)."""
    ids: list[int | None] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for entries, all_or_nothing in groups:
            # Only an id the caller chose can already be there (a generated one is new by
            # construction: a random 64-bit prefix per process and a counter).
            named = bool(entries) and entries[0].reserved_quantity is not None
            if all_or_nothing and named and _exists(conn, entries[0].event):
                ids.extend([None] * len(entries))
                continue
            ids.extend(_insert_entries(conn, entries, now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return ids


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


def _exists(conn: sqlite3.Connection, event: ValidEvent) -> bool:
    """The id is in the outbox, or was a reservation's whose rows were pruned."""
    key = (event.tenant, event.transaction_id)
    sql = "SELECT 1 FROM outbox WHERE tenant = ? AND transaction_id = ?"
    if conn.execute(sql, key).fetchone() is not None:
        return True
    sql = "SELECT 1 FROM pruned_reservations WHERE tenant = ? AND transaction_id = ?"
    return conn.execute(sql, key).fetchone() is not None


def _insert_entries(conn: sqlite3.Connection, entries: Sequence[Entry], now: float) -> list[int | None]:
    ids: list[int | None] = []
    for entry in entries:
        event = entry.event
        cursor = conn.execute(
            _INSERT,
            (
                event.tenant,
                event.transaction_id,
                event.code,
                entry.period_start,
                stored(event.value),
                exact_json.dumps(event.wire()).decode(),
                now,
                entry.reserved_quantity,
            ),
        )
        ids.append(cursor.lastrowid if cursor.rowcount == 1 else None)
    return ids


insert_entries = _insert_entries  # inside `Outbox.transact`: per entry its row, None for an id there


def _reservation(conn: sqlite3.Connection, tenant: str, transaction_id: str) -> Reserved | None:
    first = conn.execute(
        "SELECT code, value, reserved_quantity FROM outbox WHERE tenant = ? AND transaction_id = ?",
        (tenant, transaction_id),
    ).fetchone()
    if first is None:
        pruned = conn.execute(
            "SELECT code, quantity FROM pruned_reservations WHERE tenant = ? AND transaction_id = ?",
            (tenant, transaction_id),
        ).fetchone()
        return None if pruned is None else Reserved(str(pruned[0]), from_stored(pruned[1]))
    code, value, quantity = first
    if quantity is not None:
        return Reserved(str(code), from_stored(quantity))
    # The further events of a count metric's reservation: `id/2` .. `id/N` ('0' follows '/').
    more = conn.execute(
        "SELECT value FROM outbox WHERE tenant = ? AND code = ? AND transaction_id > ? AND transaction_id < ?",
        (tenant, code, transaction_id + "/", transaction_id + "0"),
    ).fetchall()
    return Reserved(str(code), total(from_stored(v) for (v,) in [(value,), *more]))


def _load(
    conn: sqlite3.Connection, position: int | None
) -> tuple[list[tuple[Key, Amount]], dict[int, dict[Key, Amount]], int, int]:
    unconfirmed: dict[Key, Amount] = {}
    confirmed: dict[int, dict[Key, Amount]] = {}
    # Whole values are summed by SQLite; decimals (stored as text) one by one, exactly, here.
    rows = conn.execute(
        "SELECT tenant, code, period_start, confirmed_seq, "
        "sum(CASE WHEN typeof(value) = 'integer' THEN value ELSE 0 END), "
        "group_concat(CASE WHEN typeof(value) = 'integer' THEN NULL ELSE value END, ' '), count(*) "
        "FROM outbox WHERE (confirmed_seq IS NULL OR confirmed_seq > ?) AND period_start != ? "
        "GROUP BY 1, 2, 3, 4",
        (REJECTED if position is None else max(position, REJECTED), GAUGE_PERIOD_START),
    ).fetchall()
    backlog = 0
    for tenant, code, period_start, seq, whole, decimals, count in rows:
        value = _with_decimals(whole, decimals)
        if seq is None:
            unconfirmed[(tenant, code, period_start)] = value
            backlog += count
        else:
            confirmed.setdefault(seq, {})[(tenant, code, period_start)] = value
    top = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
    return list(unconfirmed.items()), confirmed, int(top), backlog


def _load_gauges(
    conn: sqlite3.Connection, position: int | None
) -> list[tuple[Key, float, Amount, int, int | None]]:
    """Gauge readings the replica at `position` may lack: (key, timestamp, value, row, seq)."""
    rows = conn.execute(
        "SELECT id, tenant, code, value, event, confirmed_seq FROM outbox "
        "WHERE (confirmed_seq IS NULL OR confirmed_seq > ?) AND period_start = ? ORDER BY id",
        (REJECTED if position is None else max(position, REJECTED), GAUGE_PERIOD_START),
    ).fetchall()
    return [
        (
            (tenant, code, GAUGE_PERIOD_START),
            float(json.loads(event)["timestamp"]),
            from_stored(value),
            i,
            seq,
        )
        for i, tenant, code, value, event, seq in rows
    ]


def _with_decimals(whole: int, decimals: str | None) -> Amount:
    value: Amount = whole
    for text in decimals.split() if decimals else ():
        value = add(value, from_stored(text))
    return value


def _undelivered(conn: sqlite3.Connection, top: int, limit: int) -> list[OutboxRow]:
    rows = conn.execute(
        "SELECT id, tenant, code, period_start, value, transaction_id, event, accepted_at FROM outbox "
        "WHERE confirmed_seq IS NULL AND id <= ? ORDER BY id LIMIT ?",
        (top, limit),
    ).fetchall()
    return [OutboxRow(i, (t, c, p), from_stored(v), x, e, a) for i, t, c, p, v, x, e, a in rows]


def _bounded(rows: list[OutboxRow], max_bytes: int) -> list[OutboxRow]:
    total = 0
    for n, row in enumerate(rows):
        total += row.size + 1  # its separating comma
        if total > max_bytes and n > 0:
            return rows[:n]
    return rows


def _mark(conn: sqlite3.Connection, rows: Sequence[OutboxRow], seq: int, rejected: set[int]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "UPDATE outbox SET confirmed_seq = ? WHERE id = ?",
            [(REJECTED if row.id in rejected else seq, row.id) for row in rows],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_PRUNABLE = "confirmed_seq BETWEEN 0 AND ? AND accepted_at < ?"


def _prune(conn: sqlite3.Connection, position: int, cutoff: float, now: float, ids_cutoff: float) -> int:
    """Delete the rows the replica includes that are older than `cutoff`, keeping each named
    reservation's (tenant, id, code, quantity); forget those records older than `ids_cutoff`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT OR IGNORE INTO pruned_reservations (tenant, transaction_id, code, quantity, pruned_at) "
            f"SELECT tenant, transaction_id, code, reserved_quantity, ? FROM outbox WHERE {_PRUNABLE} "
            "AND reserved_quantity IS NOT NULL",
            (now, position, cutoff),
        )
        deleted = int(conn.execute(f"DELETE FROM outbox WHERE {_PRUNABLE}", (position, cutoff)).rowcount)
        conn.execute("DELETE FROM pruned_reservations WHERE pruned_at < ?", (ids_cutoff,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted
