"""`SqliteMirror`: the mirror in one SQLite file (the embedded default), one writer thread for every change.

All writes run on a single-thread executor that owns the only writing connection, so the event
loop never blocks on SQLite and transactions are serial: seqs commit in order by construction.
Reads (snapshot, changes, reconcile) open their own connections: WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from tiergate.errors import MirrorError
from tiergate.sync_daemon.mirror.schema import CHANGES, MIGRATIONS
from tiergate.sync_daemon.mirror.sql import SqlMirror
from tiergate.sync_daemon.mirror.store import Cursor, MirrorTxn, Sql

T = TypeVar("T")


class SqliteSql:
    """`Sql` over a sqlite3 connection (its placeholders are already `?`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, params)


class SqliteMirror(SqlMirror):
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__(writers=1)
        self.path = path
        self._db: sqlite_utils.Database | None = None

    @property
    def where(self) -> str:
        return f"sqlite:{self.path}"

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._db = db = await loop.run_in_executor(self._writer, open_writer, self.path)
        self.seq = await loop.run_in_executor(self._writer, _last_seq, SqliteSql(db.conn))

    async def close(self) -> None:
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._db.close)
            self._db = None
        await self._shutdown()

    def _write(self, fn: Callable[[MirrorTxn], T], want_seq: bool) -> tuple[T, int | None]:
        if self._db is None:
            raise MirrorError(f"mirror {self.path} is not open")
        db = self._db
        sql = SqliteSql(db.conn)
        txn = MirrorTxn(sql)
        with db.atomic():
            result = fn(txn)
            for tenant, kind, op, body in txn.pending:
                sql.execute(
                    f"INSERT INTO {CHANGES} (tenant, kind, op, body, at) "
                    "VALUES (?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
                    [tenant, kind, op, body],
                )
        return result, _last_seq(sql) if txn.pending or want_seq else None

    def _reader(self) -> tuple[Sql, Callable[[], None]]:
        # check_same_thread off: a snapshot's connection moves between reader threads, but is
        # only ever used by one at a time (each step is awaited before the next).
        conn = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        return SqliteSql(conn), conn.close

    def _last_seq(self, sql: Sql) -> int:
        return _last_seq(sql)


def open_writer(path: Path) -> sqlite_utils.Database:
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
        db.execute("PRAGMA busy_timeout = 5000")
        MIGRATIONS.apply(db)
    except sqlite3.DatabaseError as exc:
        raise MirrorError(f"mirror {path} is not a usable SQLite file: {exc}") from exc
    return db


def _last_seq(sql: Sql) -> int:
    found = sql.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", [CHANGES]).fetchone()
    return int(found[0]) if found else 0
