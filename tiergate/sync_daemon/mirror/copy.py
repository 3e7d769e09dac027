"""`tiergate mirror copy`: move the daemon's mirror between SQLite files and PostgreSQL databases.

Both ends are migrated to this version's schema first (each by its own migrations), so their
tables and columns match. The copy is one read transaction on the source (a consistent cut) and
ONE write transaction on the target, filled in batches: a copy that is killed or fails leaves the
target as it was (empty, or its old rows), never half-written. Before the commit the target is
read back and verified: per table, the row count and an order-independent checksum (the sum of
a digest of each row's canonical rendering, computed by the same function on both sides), and
the positions followers depend on (the change feed's last seq, the audit's last id). A target
that already holds rows is refused unless `force` (then they are replaced, in the same transaction).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from tiergate.amounts import exact, stored
from tiergate.errors import MirrorError
from tiergate.sync_daemon.mirror.backends import POSTGRES_SCHEMES

Row = Sequence[Any]

# Bookkeeping, not data: each backend's migration records, SQLite's AUTOINCREMENT counters and
# PostgreSQL's feed head (their numbers are carried over as positions, below).
_BOOKKEEPING = frozenset({"_sqlite_migrations", "sqlite_sequence", "schema_migrations", "feed_head"})
# Tables whose numbering continues where the source's stopped, even past their last rows: the
# change feed (a follower's `since` stays valid; trimmed seqs are never reused), the audit's and
# the account versions' ids.
POSITIONED = ("changes", "override_audit", "account_versions")
_MODULUS = 2**128
_CLAIM_WAIT_S = 5.0


def plain(value: Any) -> Any:
    """A value as SQLite keeps it: PostgreSQL's `numeric` (a Decimal) becomes the exact amount's
    stored form, an int when whole, else its decimal text (tiergate/amounts.py)."""
    return stored(exact(value)) if isinstance(value, Decimal) else value


def canonical(columns: Sequence[str], row: Row) -> str:
    """One row as JSON with sorted keys: the same text whichever backend it was read from."""
    return json.dumps(
        {column: plain(value) for column, value in zip(columns, row, strict=True)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def row_digest(columns: Sequence[str], row: Row) -> int:
    return int.from_bytes(hashlib.sha256(canonical(columns, row).encode()).digest()[:16], "big")


@dataclass
class TableSum:
    """Rows and their checksum: a sum of digests (order-independent; a duplicated row still counts)."""

    rows: int = 0
    checksum: int = 0

    def add(self, columns: Sequence[str], rows: Sequence[Row]) -> None:
        self.rows += len(rows)
        self.checksum = (self.checksum + sum(row_digest(columns, row) for row in rows)) % _MODULUS

    @property
    def hex(self) -> str:
        return f"{self.checksum:032x}"


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    source_sums: dict[str, TableSum]
    target_sums: dict[str, TableSum]
    source_positions: dict[str, int]
    target_positions: dict[str, int]
    replaced: dict[str, int] = field(default_factory=dict)  # rows the target held before (--force)

    def mismatches(self) -> list[str]:
        wrong = [t for t, s in self.source_sums.items() if s != self.target_sums.get(t)]
        wrong += [
            f"position of {n}" for n, p in self.source_positions.items() if p != self.target_positions.get(n)
        ]
        return wrong

    @property
    def verified(self) -> bool:
        return not self.mismatches()

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.source_sums.values())

    def lines(self) -> list[str]:
        width = max(len(t) for t in self.source_sums)
        out = [f"{'table':<{width}}  {'rows':>9}  checksum (source = target)"]
        for table, sums in sorted(self.source_sums.items()):
            other = self.target_sums.get(table, TableSum())
            same = "=" if sums == other else f"!= {other.rows} rows, {other.hex}"
            out.append(f"{table:<{width}}  {sums.rows:>9}  {sums.hex} {same}")
        for name, position in sorted(self.source_positions.items()):
            other_position = self.target_positions.get(name)
            same = "=" if position == other_position else f"!= {other_position}"
            out.append(f"position of {name}: {position} {same}")
        return out


class CopyProgress(Protocol):
    def start(self, totals: dict[str, int]) -> None: ...
    def advance(self, table: str, rows: int) -> None: ...


class _Silent:
    def start(self, totals: dict[str, int]) -> None:
        return None

    def advance(self, table: str, rows: int) -> None:
        return None


class End(Protocol):
    """One side of a copy: a migrated mirror database on one connection."""

    where: str

    def tables(self) -> dict[str, tuple[str, ...]]: ...
    def claim(self) -> None: ...
    def begin(self, *, write: bool) -> None: ...
    def finish(self, *, commit: bool) -> None: ...
    def count(self, table: str) -> int: ...
    def batches(self, table: str, columns: Sequence[str], size: int) -> Iterator[Sequence[Row]]: ...
    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None: ...
    def clear(self, table: str) -> None: ...
    def positions(self) -> dict[str, int]: ...
    def set_positions(self, positions: dict[str, int]) -> None: ...
    def close(self) -> None: ...


class SqliteEnd:
    def __init__(self, path: Path, *, create: bool) -> None:
        from tiergate.sync_daemon.mirror.sqlite import open_writer

        if not create and not path.is_file():
            raise MirrorError(f"sqlite:{path} does not exist (the source must be an existing mirror file)")
        self.where = f"sqlite:{path}"
        open_writer(path).close()  # creates the file (target) and applies the migrations
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout = 5000")

    def tables(self) -> dict[str, tuple[str, ...]]:
        names = [
            str(r[0])
            for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        ]
        return {
            name: tuple(str(c[1]) for c in self.conn.execute(f'PRAGMA table_info("{name}")').fetchall())
            for name in sorted(names)
            if name not in _BOOKKEEPING
        }

    def claim(self) -> None:
        return None  # BEGIN IMMEDIATE serializes with a daemon's writer on the same file

    def begin(self, *, write: bool) -> None:
        self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def finish(self, *, commit: bool) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT" if commit else "ROLLBACK")

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def batches(self, table: str, columns: Sequence[str], size: int) -> Iterator[Sequence[Row]]:
        cursor = self.conn.execute(f"SELECT {', '.join(columns)} FROM {table}")
        while rows := cursor.fetchmany(size):
            yield rows

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        marks = ", ".join("?" for _ in columns)
        self.conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            ([plain(value) for value in row] for row in rows),
        )

    def clear(self, table: str) -> None:
        self.conn.execute(f"DELETE FROM {table}")

    def positions(self) -> dict[str, int]:
        found = dict(self.conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        return {name: int(found.get(name) or 0) for name in POSITIONED}

    def set_positions(self, positions: dict[str, int]) -> None:
        for name, position in positions.items():
            self.conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", [name])
            self.conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", [name, position])

    def close(self) -> None:
        self.conn.close()


class PostgresEnd:
    def __init__(self, url: str) -> None:
        import psycopg

        from tiergate.sync_daemon.mirror.postgres import redact, said
        from tiergate.sync_daemon.mirror.postgres_schema import SCHEMA, migrate

        self.where = redact(url)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            migrate(self.conn)
        except psycopg.Error as exc:
            raise MirrorError(
                f"PostgreSQL mirror at {self.where} cannot be opened: {said(exc, url)}"
            ) from None  # its text quotes the URL
        self.conn.execute(f"SET search_path TO {SCHEMA}")
        self._schema = SCHEMA

    def tables(self) -> dict[str, tuple[str, ...]]:
        """The mirror's tables and columns, without `changes.id` (the order changes were inserted in
        before being numbered: internal to PostgreSQL's feed, renumbered by the target)."""
        rows = self.conn.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE' "
            "ORDER BY c.table_name, c.ordinal_position",
            [self._schema],
        ).fetchall()
        tables: dict[str, list[str]] = {}
        for table, column in rows:
            if (table, column) != ("changes", "id"):
                tables.setdefault(str(table), []).append(str(column))
        return {name: tuple(columns) for name, columns in tables.items() if name not in _BOOKKEEPING}

    def claim(self) -> None:
        """Hold the leader's lock for the copy: refuse while a daemon runs on this database."""
        from tiergate.sync_daemon.mirror.postgres_schema import LEADER_LOCK

        deadline = time.monotonic() + _CLAIM_WAIT_S  # a killed copy's session may take a moment to end
        while not self.conn.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK]).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise MirrorError(
                    f"a tiergate daemon is running on {self.where} (it holds the leader lock): "
                    "stop the daemons before copying into this database"
                )
            time.sleep(0.2)

    def begin(self, *, write: bool) -> None:
        if write:
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            return
        # A source daemons may still write to: the feed's consistent cut, everything numbered (ADR 0020).
        from tiergate.sync_daemon.mirror.postgres import FEED_CUT, PostgresSql, number_changes

        self.conn.execute("SELECT pg_advisory_lock(%s, 0)", [FEED_CUT])
        try:
            number_changes(PostgresSql(self.conn), wait=True)
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            unnumbered = self.conn.execute("SELECT count(*) FROM changes WHERE seq IS NULL").fetchone()
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(%s, 0)", [FEED_CUT])
        if unnumbered and unnumbered[0]:
            raise MirrorError(
                f"{self.where} holds {unnumbered[0]} changes without a feed position; "
                "start a tiergate daemon on it once (it numbers them) and copy again"
            )

    def finish(self, *, commit: bool) -> None:
        if not self.conn.closed:
            self.conn.execute("COMMIT" if commit else "ROLLBACK")

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]

    def batches(self, table: str, columns: Sequence[str], size: int) -> Iterator[Sequence[Row]]:
        with self.conn.cursor(name=f"copy_{table}") as cursor:  # server-side: streams, never all at once
            cursor.execute(f"SELECT {', '.join(columns)} FROM {table}")
            while rows := cursor.fetchmany(size):
                yield rows

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        with (
            self.conn.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def clear(self, table: str) -> None:
        self.conn.execute(f"DELETE FROM {table}")

    def positions(self) -> dict[str, int]:
        head = self.conn.execute("SELECT seq FROM feed_head").fetchone()
        found = {"changes": int(head[0]) if head else 0}
        for name in POSITIONED[1:]:
            last, called = self.conn.execute(
                f"SELECT last_value, is_called FROM {self._sequence(name)}"
            ).fetchone()  # type: ignore[misc]
            found[name] = int(last) if called else 0
        return found

    def set_positions(self, positions: dict[str, int]) -> None:
        for name, position in positions.items():
            if name == "changes":
                self.conn.execute("UPDATE feed_head SET seq = %s", [position])
            else:
                self.conn.execute(
                    "SELECT setval(%s, %s, %s)", [self._sequence(name), max(position, 1), position > 0]
                )

    def _sequence(self, table: str) -> str:
        found = self.conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", [f"{self._schema}.{table}"])
        return str(found.fetchone()[0])  # type: ignore[index]

    def close(self) -> None:
        self.conn.close()


def open_end(location: str, *, create: bool) -> End:
    """`postgresql://…` (or `postgres://…`), `sqlite:PATH` or a bare path."""
    if location.startswith(POSTGRES_SCHEMES):
        return PostgresEnd(location)
    if "://" in location:
        raise MirrorError(
            f"{location.split('://')[0]}://… is not a mirror; use postgresql://… or sqlite:PATH"
        )
    return SqliteEnd(Path(location.removeprefix("sqlite:")), create=create)


def same_place(source: str, target: str) -> bool:
    if source.startswith(POSTGRES_SCHEMES) or target.startswith(POSTGRES_SCHEMES):
        return source == target
    return Path(source.removeprefix("sqlite:")).resolve() == Path(target.removeprefix("sqlite:")).resolve()


def copy_mirror(
    source: str,
    target: str,
    *,
    force: bool = False,
    batch_size: int = 1000,
    progress: CopyProgress | None = None,
) -> CopyReport:
    """Copy every row and position of `source` into `target`, verified before it commits."""
    if same_place(source, target):
        raise MirrorError(f"the source and the target are the same mirror ({source})")
    src = open_end(source, create=False)
    try:
        dst = open_end(target, create=True)
        try:
            return _copy_between(src, dst, force, batch_size, progress or _Silent())
        finally:
            dst.close()
    finally:
        src.close()


def _copy_between(src: End, dst: End, force: bool, batch_size: int, progress: CopyProgress) -> CopyReport:
    tables = _matching_tables(src, dst)
    dst.claim()
    src.begin(write=False)
    try:
        dst.begin(write=True)
        try:
            report = _copy_tables(src, dst, tables, force, batch_size, progress)
        except BaseException:
            dst.finish(commit=False)
            raise
        dst.finish(commit=True)
        return report
    finally:
        src.finish(commit=False)


def _matching_tables(src: End, dst: End) -> dict[str, tuple[str, ...]]:
    mine, theirs = src.tables(), dst.tables()
    if set(mine) != set(theirs):
        raise MirrorError(
            f"{src.where} and {dst.where} hold different tables: {sorted(set(mine) ^ set(theirs))}"
        )
    for table, columns in mine.items():
        if set(columns) != set(theirs[table]):
            raise MirrorError(f"table {table} has different columns in {src.where} and {dst.where}")
    return mine


def _copy_tables(
    src: End,
    dst: End,
    tables: dict[str, tuple[str, ...]],
    force: bool,
    batch_size: int,
    progress: CopyProgress,
) -> CopyReport:
    held = _contents(dst, tables)
    if held and not force:
        listed = ", ".join(f"{name}: {n}" for name, n in held.items())
        raise MirrorError(f"{dst.where} is not empty ({listed}); pass --force to replace what it holds")
    for table in tables:
        dst.clear(table)
    progress.start({table: src.count(table) for table in tables})
    source_sums = {table: TableSum() for table in tables}
    for table, columns in tables.items():
        for rows in src.batches(table, columns, batch_size):
            dst.insert(table, columns, rows)
            source_sums[table].add(columns, rows)
            progress.advance(table, len(rows))
    positions = src.positions()
    dst.set_positions(positions)
    report = CopyReport(
        src.where,
        dst.where,
        source_sums,
        {table: _sums(dst, table, columns, batch_size) for table, columns in tables.items()},
        positions,
        dst.positions(),
        {name: n for name, n in held.items() if name in tables},
    )
    if not report.verified:
        raise MirrorError(
            f"the copy into {dst.where} does not match its source ({', '.join(report.mismatches())}); "
            "nothing was committed:\n" + "\n".join(report.lines())
        )
    return report


def _contents(end: End, tables: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """What the end holds: rows per non-empty table, and feed/audit positions already used."""
    held = {table: n for table in tables if (n := end.count(table))}
    held.update({f"position of {name}": p for name, p in end.positions().items() if p})
    return held


def _sums(end: End, table: str, columns: Sequence[str], batch_size: int) -> TableSum:
    sums = TableSum()
    for rows in end.batches(table, columns, batch_size):
        sums.add(columns, rows)
    return sums
