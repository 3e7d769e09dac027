"""`PostgresMirror`: the mirror in PostgreSQL (schema `tiergate`), shared by several daemons.

Transactions run on worker threads with psycopg's connections from a `psycopg_pool` pool (the
transaction bodies are the same plain functions SQLite runs). Under READ COMMITTED, correctness
across daemons comes from three locks, all released at commit:
- an advisory lock per event id (`MirrorTxn.seen`): a webhook delivered to two daemons at once
  is applied once, the other copy sees it recorded;
- an advisory lock per tenant (`MirrorTxn.account`): a read-decide-write of one account never
  interleaves with another, so an older event cannot overwrite a newer one;
- the feed: changes are inserted unnumbered and numbered in id order under `feed_head`'s row lock,
  which nobody waits for while writing: taken with SKIP LOCKED at the end of the transaction, or
  after the commit by whoever finds it free; whoever held it looks again after releasing it
  (ADR 0020, amending ADR 0013). A shared advisory lock held by writers of changes lets a
  snapshot take a consistent cut (everything committed numbered) by briefly taking it exclusively.
A deadlock or serialization failure re-runs the whole transaction. `LISTEN tiergate_feed` (on an
async connection) wakes this daemon's long polls when another daemon commits; a sweep every
second numbers what a daemon killed between its commit and its numbering left behind.

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

import psycopg
import structlog
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from tiergate.errors import MirrorError
from tiergate.settings_errors import redact_url, scrub_url
from tiergate.sync_daemon.mirror.postgres_schema import SCHEMA, migrate
from tiergate.sync_daemon.mirror.schema import CHANGES
from tiergate.sync_daemon.mirror.sql import SqlMirror
from tiergate.sync_daemon.mirror.store import Cursor, FeedBacklog, MirrorTxn, Sql, upsert_statement

log = structlog.get_logger("tiergate.mirror")

T = TypeVar("T")
CHANNEL = "tiergate_feed"
_LOCK_CLASSES = {
    "event": 1,
    "tenant": 2,
    "usage_events": 3,
    "sink": 4,
    "lease": 6,  # one (tenant, metric, window) of quota leases (5 is FEED_CUT's)
}  # pg_advisory_xact_lock(class, hashtext(key))
# pg_advisory_xact_lock_shared(FEED_CUT, 0) by every transaction that logs changes, held to its
# commit; pg_advisory_lock(FEED_CUT, 0) (exclusive) for a moment by a snapshot's consistent cut.
FEED_CUT = 5
_HELP_ROUNDS = 100  # a helper that keeps finding new rows stops here (the others and the sweep go on)
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

    concurrent = True

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

    def write(self, sql: str, params: Sequence[Any]) -> None:
        self._pg.defer(sql, params)

    def flush(self) -> None:
        self._pg.flush()


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return redact_url(url)


def said(exc: BaseException, url: str) -> str:
    """What the driver said, without the URL's password (libpq quotes a URI it cannot parse)."""
    return scrub_url(str(exc), url)


class PostgresMirror(SqlMirror):
    backend = "postgresql"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        timeout_s: float = 10.0,
        sweep_s: float = 1.0,
        stale_after_s: float = 2.0,
    ) -> None:
        super().__init__(writers=pool_size)
        self.url = url
        self._timeout_s = timeout_s
        self._pool = _pool(url, pool_size, timeout_s, "tiergate-mirror-write", check=False)
        self._read_pool = _pool(url, 4, timeout_s, "tiergate-mirror-read", check=True)
        self._listener: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.listening = False
        self.sweep_s = sweep_s  # how often this daemon looks for changes left unnumbered
        self.stale_after_s = stale_after_s  # how old an unnumbered change is before the sweep numbers it

    @property
    def where(self) -> str:
        return redact(self.url)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._open_sync)
        except (psycopg.Error, PoolTimeout) as exc:
            raise MirrorError(
                f"PostgreSQL mirror at {self.where} cannot be opened: {said(exc, self.url)}"
            ) from None  # its text quotes the URL
        self.seq = await self.last_seq()
        self._listener = asyncio.create_task(self._listen(), name="mirror-listen")
        self._sweeper = asyncio.create_task(self._sweep(), name="mirror-sweep")

    def _open_sync(self) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._timeout_s)) as conn:
            applied = migrate(conn)
        if applied:
            log.info("mirror_migrated", backend=self.backend, applied=applied)
        self._pool.open(wait=True, timeout=self._timeout_s)
        self._read_pool.open(wait=True, timeout=self._timeout_s)

    async def close(self) -> None:
        self._stopping.set()
        for task in (self._listener, self._sweeper):
            if task is not None:
                await task
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
                raise MirrorError(f"PostgreSQL mirror at {self.where}: {said(exc, self.url)}") from exc
            log.warning("mirror_connection_lost", error=str(exc), retry=True)
        try:
            self._pool.check()
            return self._write_on_a_connection(_Body(fn), want_seq)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise MirrorError(f"PostgreSQL mirror at {self.where}: {said(exc, self.url)}") from exc

    def _write_on_a_connection(self, fn: _Body[T], want_seq: bool) -> tuple[T, int | None]:
        try:
            with self._pool.connection() as conn:
                for attempt in range(_RETRIES):
                    try:
                        result, logged, top = self._attempt(conn, fn)
                        break
                    except _RETRYABLE:
                        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # on a worker thread
                else:
                    raise MirrorError(f"a mirror transaction kept conflicting after {_RETRIES} attempts")
                return result, self._settle(PostgresSql(conn), logged, top, want_seq)
        except PoolTimeout as exc:
            raise MirrorError(f"PostgreSQL mirror at {self.where}: {said(exc, self.url)}") from exc

    def _attempt(self, conn: Connection, fn: Callable[[MirrorTxn], T]) -> tuple[T, bool, int | None]:
        """One transaction: the result, whether it logged changes, and the head if it numbered them."""
        sql = PostgresSql(conn)
        with conn.transaction():
            txn = PostgresTxn(sql)
            result = fn(txn)
            if not txn.pending:
                return result, False, None
            _insert_changes(sql, txn.pending)
            return result, True, self._number_in_txn(sql)

    def _number_in_txn(self, sql: Sql) -> int | None:
        """The fast path: number (ours and any left by others) if feed_head's lock is free; never wait."""
        return number_changes(sql, wait=False)

    def _settle(self, sql: Sql, logged: bool, top: int | None, want_seq: bool) -> int | None:
        """After the commit: number what is left; the seq covering this transaction when `want_seq`.

        A writer that held the lock looks again now that it released it (a writer that found it
        taken meanwhile relies on that); one that committed unnumbered rows tries to number them.
        Only a caller that needs the seq (`transact_seq`) ever waits for the lock.
        """
        if logged:
            try:
                helped = help_number(sql, held=top is not None)
            except psycopg.Error as exc:  # committed: the other writers or the sweep number the rows
                if want_seq:
                    raise
                log.warning("mirror_numbering_failed", error=str(exc))
                return top
            if helped is not None:
                top = helped if top is None else max(top, helped)
            if top is not None or not want_seq:
                return top
        elif not want_seq:
            return None
        else:
            head, waiting = sql.execute(
                f"SELECT seq, EXISTS (SELECT 1 FROM {CHANGES} WHERE seq IS NULL) FROM feed_head"
            ).fetchone()
            if not waiting:
                return int(head)
        return wait_numbered(sql)

    def _reader(self) -> tuple[Sql, Callable[[], None]]:
        try:
            conn = self._read_pool.getconn()
        except PoolTimeout as exc:
            raise MirrorError(f"PostgreSQL mirror at {self.where}: {said(exc, self.url)}") from exc
        return PostgresSql(conn), functools.partial(self._read_pool.putconn, conn)

    def _last_seq(self, sql: Sql) -> int:
        return _last_seq(sql)

    def _begin_snapshot(self, sql: Sql) -> int:
        """A consistent cut: every change committed so far numbered, none committed unnumbered since.

        The exclusive form of FEED_CUT waits for the writers that are logging changes and holds new
        ones back for a moment: in-flight ones commit, everything is numbered, the read transaction
        takes its snapshot, and the writers go on. The header's seq then covers exactly the
        changes the snapshot's rows reflect (ADR 0020).
        """
        assert isinstance(sql, PostgresSql)
        try:
            sql.execute("SELECT pg_advisory_lock(?, 0)", [FEED_CUT])
            # Nothing can be committed unnumbered while the cut is held: no need to look again after.
            number_changes(sql, wait=True)
            sql.execute(self.begin_read)
            seq = _last_seq(sql)  # the first statement: the snapshot is taken here
            sql.execute("SELECT pg_advisory_unlock(?, 0)", [FEED_CUT])
        except BaseException:
            sql.conn.close()  # the session ends, and with it the lock: never back to the pool holding it
            raise
        return seq

    async def _sweep(self) -> None:
        """Measure the unnumbered backlog; number changes left unnumbered too long (a daemon killed
        between its commit and its numbering, or a failed numbering)."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.sweep_s)
            if self._stopping.is_set():
                return
            try:
                top = await loop.run_in_executor(self._writer, self._sweep_once)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("mirror_sweep_failed", error=str(exc))
                continue
            if top is not None:
                self.advance(top)

    def _sweep_once(self) -> int | None:
        with self._pool.connection() as conn:
            sql = PostgresSql(conn)
            backlog = measure_backlog(sql, self.stale_after_s)
            self.backlog = backlog.replace(swept=self.backlog.swept)
            if not backlog.stale:
                return None
            top = help_number(sql, held=False)
            if top is not None:
                self.backlog = self.backlog.replace(swept=self.backlog.swept + backlog.stale)
                log.warning(
                    "feed_unnumbered_swept", stale=backlog.stale, unnumbered=backlog.unnumbered, seq=top
                )
            return top

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


def _insert_changes(sql: Sql, pending: list[tuple[str, str, str, str | None]]) -> None:
    """The transaction's changes, unnumbered, in one statement (ids in the order they were logged),
    under the shared FEED_CUT lock (taken first, held to the commit)."""
    columns = list(zip(*pending, strict=True))
    sql.execute(
        "WITH cut AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(?, 0)) "
        f"INSERT INTO {CHANGES} (tenant, kind, op, body, at) "
        "SELECT c.tenant, c.kind, c.op, c.body, ? FROM cut, "
        "unnest(?::text[], ?::text[], ?::text[], ?::text[]) WITH ORDINALITY AS c(tenant, kind, op, body, n) "
        "ORDER BY c.n",
        [FEED_CUT, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), *(list(column) for column in columns)],
    )


def number_changes(sql: Sql, *, wait: bool) -> int | None:
    """Number every committed unnumbered change (the head after), or None: the lock was taken."""
    found = sql.execute("SELECT number_changes(?)", [wait]).fetchone()[0]
    return None if found is None else int(found)


def unnumbered_exist(sql: Sql) -> bool:
    return bool(sql.execute(f"SELECT EXISTS (SELECT 1 FROM {CHANGES} WHERE seq IS NULL)").fetchone()[0])


def help_number(sql: Sql, *, held: bool) -> int | None:
    """After a commit (autocommit): number what is unnumbered until none is left or another holds the
    lock — that holder looks again after its own release. `held`: the caller just released the lock
    (it looks first). The newest head this numbered, or None."""
    newest: int | None = None
    for _ in range(_HELP_ROUNDS):
        if held and not unnumbered_exist(sql):
            return newest
        top = number_changes(sql, wait=False)
        if top is None:
            return newest
        newest, held = top, True
    return newest


def wait_numbered(sql: Sql) -> int:
    """The head once every change committed before now is numbered (waits for the lock)."""
    top = number_changes(sql, wait=True)
    assert top is not None
    helped = help_number(sql, held=True)
    return max(top, helped or 0)


def measure_backlog(sql: Sql, stale_after_s: float) -> FeedBacklog:
    count, stale, oldest = sql.execute(
        "SELECT count(*), count(*) FILTER (WHERE at::timestamptz < now() - make_interval(secs => ?)), "
        f"COALESCE(extract(epoch FROM now() - min(at)::timestamptz), 0) FROM {CHANGES} WHERE seq IS NULL",
        [stale_after_s],
    ).fetchone()
    return FeedBacklog(unnumbered=int(count), stale=int(stale), oldest_s=max(float(oldest), 0.0))


def _last_seq(sql: Sql) -> int:
    return int(sql.execute("SELECT seq FROM feed_head").fetchone()[0])
