"""`PostgresMirror`: the mirror in PostgreSQL (schema `tiergate`), shared by several daemons.

Transactions run on worker threads with psycopg's connections from a `psycopg_pool` pool (the
transaction bodies are the same plain functions SQLite runs). Under READ COMMITTED, correctness
across daemons comes from three locks, all released at commit:
- an advisory lock per event id (`MirrorTxn.seen`): a webhook delivered to two daemons at once
  is applied once, the other copy sees it recorded;
- an advisory lock per tenant (`MirrorTxn.account`): a read-decide-write of one account never
  interleaves with another, so an older event cannot overwrite a newer one;
- `feed_head`'s row lock, taken last: seqs are assigned at commit, in commit order (ADR 0013).
A deadlock or serialization failure re-runs the whole transaction. `LISTEN tiergate_feed` (on an
async connection) wakes this daemon's long polls when another daemon commits.

Each round trip costs the daemon CPU (a thread that sleeps on the socket and is woken again), so a
transaction makes few: a lock and the read after it go together (two statements, one simple
query: each statement keeps its own snapshot), reads are not repeated within a transaction
(`MirrorTxn` keeps the accounts and customer links it read), upserts go with the next statement
(or just before the commit), and the write pool lends connections without testing them first (a
transaction that finds its connection broken runs again, once, on a fresh one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import psycopg
import structlog
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from sync_daemon.mirror.postgres_schema import SCHEMA, migrate
from sync_daemon.mirror.schema import CHANGES
from sync_daemon.mirror.sql import SqlMirror
from sync_daemon.mirror.store import Cursor, MirrorTxn, Sql, upsert_statement
from tiergate.errors import MirrorError

log = structlog.get_logger("tiergate.mirror")

T = TypeVar("T")
CHANNEL = "tiergate_feed"
_LOCK_CLASSES = {
    "event": 1,
    "tenant": 2,
    "usage_events": 3,
    "sink": 4,
}  # pg_advisory_xact_lock(class, hashtext(key))
_RETRIES = 30
_LISTEN_TICK_S = 0.1
_RETRYABLE = (errors.SerializationFailure, errors.DeadlockDetected)
Connection = psycopg.Connection[tuple[Any, ...]]


@functools.lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """The shared SQL's `?` placeholders in psycopg's form (no statement has a literal `?` or `%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresSql:
    """`Sql` over a psycopg connection; writes whose results nobody reads can wait for the next round trip."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._deferred: list[tuple[str, Sequence[Any]]] = []  # sent, in order, before the next statement

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self._deferred:
            return self._together([*self._take(), (sql, params)])
        return self.conn.execute(placeholders(sql), params)

    def execute_after(
        self, first: str, first_params: Sequence[Any], sql: str, params: Sequence[Any]
    ) -> Cursor:
        """`first`, then `sql`, in one round trip; the cursor holds `sql`'s rows.

        Two statements, not one: under READ COMMITTED each statement reads from a snapshot taken
        when it starts, so a read in the same statement as a lock that waited would not see what
        the lock's previous holder committed. Sent together as one simple query (client-side
        parameters), each still gets its own snapshot.
        """
        return self._together([*self._take(), (first, first_params), (sql, params)])

    def defer(self, sql: str, params: Sequence[Any]) -> None:
        """Run `sql` (a write, no result wanted) with the next statement, or at `flush`."""
        self._deferred.append((sql, params))

    def flush(self) -> None:
        if self._deferred:
            self._together(self._take())

    def _take(self) -> list[tuple[str, Sequence[Any]]]:
        taken, self._deferred = self._deferred, []
        return taken

    def _together(self, statements: list[tuple[str, Sequence[Any]]]) -> Cursor:
        """Several statements as one simple query, in order; the cursor holds the last one's result."""
        cursor = psycopg.ClientCursor(self.conn)
        cursor.execute(
            "; ".join(placeholders(sql) for sql, _ in statements),
            [p for _, params in statements for p in params],
        )
        while cursor.nextset():
            pass
        return cursor


_LOCK = "SELECT pg_advisory_xact_lock(?, hashtext(?))"


class PostgresTxn(MirrorTxn):
    """A transaction that remembers the advisory locks it holds (they last until it ends) and
    sends its upserts together with its next statement (`flush` sends what is left)."""

    def __init__(self, sql: PostgresSql) -> None:
        super().__init__(sql)
        self._pg = sql
        self._held: set[tuple[str, str]] = set()

    def lock(self, kind: str, key: str) -> None:
        if (kind, key) not in self._held:
            self._pg.execute(_LOCK, [_LOCK_CLASSES[kind], key])
            self._held.add((kind, key))

    def locked_read(self, kind: str, key: str, sql: str, params: Sequence[Any]) -> Cursor:
        if (kind, key) in self._held:
            return self._pg.execute(sql, params)
        cursor = self._pg.execute_after(_LOCK, [_LOCK_CLASSES[kind], key], sql, params)
        self._held.add((kind, key))
        return cursor

    def upsert(self, table: str, row: dict[str, Any], key: str) -> None:
        self._pg.defer(*upsert_statement(table, row, key))

    def flush(self) -> None:
        self._pg.flush()


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class PostgresMirror(SqlMirror):
    backend = "postgresql"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"

    def __init__(self, url: str, *, pool_size: int = 8, timeout_s: float = 10.0) -> None:
        super().__init__(writers=pool_size)
        self.url = url
        self._timeout_s = timeout_s
        self._pool = _pool(url, pool_size, timeout_s, "tiergate-mirror-write", check=False)
        self._read_pool = _pool(url, 4, timeout_s, "tiergate-mirror-read", check=True)
        self._listener: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.listening = False

    @property
    def where(self) -> str:
        return redact(self.url)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._open_sync)
        except (psycopg.Error, PoolTimeout) as exc:
            raise MirrorError(f"PostgreSQL mirror at {self.where} cannot be opened: {exc}") from exc
        self.seq = await self.last_seq()
        self._listener = asyncio.create_task(self._listen(), name="mirror-listen")

    def _open_sync(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._timeout_s)) as conn:
            applied = migrate(conn)
        if applied:
            log.info("mirror_migrated", backend=self.backend, applied=applied)
        self._pool.open(wait=True, timeout=self._timeout_s)
        self._read_pool.open(wait=True, timeout=self._timeout_s)

    async def close(self) -> None:
        if self._listener is not None:
            self._stopping.set()
            await self._listener
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._pool.close)
        await loop.run_in_executor(self._writer, self._read_pool.close)
        await self._shutdown()

    def _write(self, fn: Callable[[MirrorTxn], T], want_seq: bool) -> tuple[T, int | None]:
        """Run `fn` in a transaction, again on a fresh connection if the first one was found broken.

        The pool does not test a connection before lending it (a round trip per transaction):
        a connection that died while idle (a restarted server, `pg_terminate_backend`, a network
        cut) fails the transaction with `OperationalError` before anything commits. Then every
        idle connection is tested and the transaction runs once more. A connection lost once
        `fn` has returned (while numbering changes or committing) may have committed: that is
        never re-run but reported, like any other failure, as `MirrorError`.
        """
        body = _Body(fn)
        try:
            return self._write_on_a_connection(body, want_seq)
        except psycopg.OperationalError as exc:
            if body.finished or not _connection_lost(exc):
                raise MirrorError(f"PostgreSQL mirror at {self.where}: {exc}") from exc
            log.warning("mirror_connection_lost", error=str(exc), retry=True)
        try:
            self._pool.check()
            return self._write_on_a_connection(_Body(fn), want_seq)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise MirrorError(f"PostgreSQL mirror at {self.where}: {exc}") from exc

    def _write_on_a_connection(self, fn: _Body[T], want_seq: bool) -> tuple[T, int | None]:
        try:
            with self._pool.connection() as conn:
                for attempt in range(_RETRIES):
                    try:
                        return self._attempt(conn, fn, want_seq)
                    except _RETRYABLE:
                        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # on a worker thread
                raise MirrorError(f"a mirror transaction kept conflicting after {_RETRIES} attempts")
        except PoolTimeout as exc:
            raise MirrorError(f"PostgreSQL mirror at {self.where}: {exc}") from exc

    def _attempt(
        self, conn: Connection, fn: Callable[[MirrorTxn], T], want_seq: bool
    ) -> tuple[T, int | None]:
        sql = PostgresSql(conn)
        with conn.transaction():
            txn = PostgresTxn(sql)
            result = fn(txn)
            if txn.pending:
                return result, _commit_changes(sql, txn.pending)
            return result, _last_seq(sql) if want_seq else None

    def _reader(self) -> tuple[Sql, Callable[[], None]]:
        try:
            conn = self._read_pool.getconn()
        except PoolTimeout as exc:
            raise MirrorError(f"PostgreSQL mirror at {self.where}: {exc}") from exc
        return PostgresSql(conn), functools.partial(self._read_pool.putconn, conn)

    def _last_seq(self, sql: Sql) -> int:
        return _last_seq(sql)

    async def _listen(self) -> None:
        """Wake long polls on other daemons' commits; while disconnected, wake them every second.

        Stopped by `_stopping`, never by cancelling psycopg mid-call: `notifies` returns every
        `_LISTEN_TICK_S` to look at the flag, and the connection is closed by this task itself.
        """
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=int(self._timeout_s)
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    cursor = await conn.execute("SELECT seq FROM tiergate.feed_head")
                    found = await cursor.fetchone()
                    self.advance(int(found[0]) if found else 0)
                    while not self._stopping.is_set():
                        async for note in conn.notifies(timeout=_LISTEN_TICK_S):
                            self.advance(int(note.payload))
            except psycopg.Error as exc:
                log.warning("mirror_listen_lost", error=str(exc))
            self.listening = False
            self._notify()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """The connection broke (no SQLSTATE: the socket; 08: connection; 57P: server shut it), not a query."""
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


class _Body(Generic[T]):
    """A transaction body that tells whether it returned (then its transaction may have committed)."""

    def __init__(self, fn: Callable[[MirrorTxn], T]) -> None:
        self.fn = fn
        self.finished = False

    def __call__(self, txn: MirrorTxn) -> T:
        self.finished = False
        result = self.fn(txn)
        if isinstance(txn, PostgresTxn) and not txn.pending:
            txn.flush()  # the writes still held back; with changes to log, they go with those statements
        self.finished = True
        return result


def _pool(url: str, size: int, timeout_s: float, name: str, *, check: bool) -> ConnectionPool[Connection]:
    """`check`: test each connection before lending it (one round trip); without, callers retry.
    `name` is also the connections' `application_name` (pg_stat_activity tells the pools apart)."""
    return ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        open=False,
        name=name,
        timeout=timeout_s,
        kwargs={"autocommit": True, "options": f"-c search_path={SCHEMA}", "application_name": name},
        check=ConnectionPool.check_connection if check else None,
    )


def _commit_changes(sql: Sql, pending: list[tuple[str, str, str, str | None]]) -> int:
    """Number the transaction's changes under feed_head's row lock, held until commit."""
    top = int(sql.execute("UPDATE feed_head SET seq = seq + ? RETURNING seq", [len(pending)]).fetchone()[0])
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    first = top - len(pending) + 1
    for offset, (tenant, kind, op, body) in enumerate(pending):
        sql.execute(
            f"INSERT INTO {CHANGES} (seq, tenant, kind, op, body, at) VALUES (?, ?, ?, ?, ?, ?)",
            [first + offset, tenant, kind, op, body, at],
        )
    sql.execute("SELECT pg_notify(?, ?)", [CHANNEL, str(top)])
    return top


def _last_seq(sql: Sql) -> int:
    return int(sql.execute("SELECT seq FROM feed_head").fetchone()[0])
