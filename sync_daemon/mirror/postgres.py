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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import structlog
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from sync_daemon.mirror.postgres_schema import SCHEMA, migrate
from sync_daemon.mirror.schema import CHANGES
from sync_daemon.mirror.sql import SqlMirror
from sync_daemon.mirror.store import Cursor, MirrorTxn, Sql
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
    """`Sql` over a psycopg connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(placeholders(sql), params)


class PostgresTxn(MirrorTxn):
    concurrent = True

    def lock(self, kind: str, key: str) -> None:
        self.sql.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", [_LOCK_CLASSES[kind], key])


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
        self._pool = _pool(url, pool_size, timeout_s, "tiergate-mirror-write")
        self._read_pool = _pool(url, 4, timeout_s, "tiergate-mirror-read")
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
        try:
            with self._pool.connection() as conn:
                for attempt in range(_RETRIES):
                    try:
                        return self._attempt(conn, fn, want_seq)
                    except _RETRYABLE:
                        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # on a worker thread
                raise MirrorError(f"a mirror transaction kept conflicting after {_RETRIES} attempts")
        except (psycopg.OperationalError, PoolTimeout) as exc:
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


def _pool(url: str, size: int, timeout_s: float, name: str) -> ConnectionPool[Connection]:
    return ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        open=False,
        name=name,
        timeout=timeout_s,
        kwargs={"autocommit": True, "options": f"-c search_path={SCHEMA}"},
        check=ConnectionPool.check_connection,
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
