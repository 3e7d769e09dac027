"""What both mirror adapters share: worker threads, the feed reads, the snapshot, retention, wake-ups.

An adapter supplies how to run one write transaction (`_write`), how to get a read connection
(`_reader`), how a consistent read begins and where the newest seq is kept; everything else
(the SQL of the feed, the snapshot and retention) is written once, in the SQL both dialects accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tiergate.amounts import from_stored
from tiergate.feed import usage_record
from tiergate.periods import calendar_month, rfc3339
from tiergate.sync_daemon.mirror.schema import (
    ACCOUNT_VERSIONS,
    ACCOUNTS,
    CHANGES,
    CUSTOMERS,
    DECISION_RECORDS,
    EVENTS,
    OVERRIDES,
    SINK_CURSORS,
    USAGE,
    USAGE_EVENTS,
    USAGE_PERIODS,
)
from tiergate.sync_daemon.mirror.store import (
    ChangeBatch,
    FeedBacklog,
    MirrorAccount,
    MirrorTxn,
    Retention,
    Sql,
    column_names,
)

T = TypeVar("T")

# Counters of periods that have ended stay in the mirror (the platform's SQL, late events) but
# followers only need the current ones: a counter older than its tenant's current period start
# (the calendar month for a tenant without a subscription period) stays out of snapshots.
# The feed's records of counters are built by `_snapshot_body` (tiergate.feed.usage_record).
_CURRENT_USAGE = (
    "SELECT u.tenant, u.code, u.period_start, u.value, u.gauge_at "
    f"FROM {USAGE} u "
    f"LEFT JOIN {ACCOUNTS} a ON a.tenant = u.tenant "
    "WHERE u.period_start >= COALESCE(a.current_period_start, ?) ORDER BY u.tenant, u.code, u.period_start"
)


class SqlMirror:
    """The shared half of `SqliteMirror` and `PostgresMirror` (see tiergate.sync_daemon.mirror.store.Mirror)."""

    backend = "sql"
    begin_read = "BEGIN"

    def __init__(self, *, writers: int, readers: int = 4) -> None:
        self._writer = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="mirror-writer")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="mirror-reader")
        self._tick = asyncio.Event()
        self.seq = 0
        self.backlog = FeedBacklog()

    # -- what an adapter provides -------------------------------------------------------------

    @property
    def where(self) -> str:
        raise NotImplementedError

    def _write(self, fn: Callable[[MirrorTxn], T], want_seq: bool) -> tuple[T, int | None]:
        """Run `fn` in one transaction; the newest seq at commit if it logged changes (or `want_seq`)."""
        raise NotImplementedError

    def _reader(self) -> tuple[Sql, Callable[[], None]]:
        """A read connection (autocommit) and how to give it back."""
        raise NotImplementedError

    def _last_seq(self, sql: Sql) -> int:
        raise NotImplementedError

    def _begin_snapshot(self, sql: Sql) -> int:
        """Begin the snapshot's read transaction; the seq its rows reflect exactly."""
        sql.execute(self.begin_read)
        return self._last_seq(sql)

    async def _shutdown(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    # -- writes -------------------------------------------------------------------------------

    async def transact(self, fn: Callable[[MirrorTxn], T]) -> T:
        result, _ = await self._run_write(fn, want_seq=False)
        return result

    async def transact_seq(self, fn: Callable[[MirrorTxn], T]) -> tuple[T, int]:
        result, seq = await self._run_write(fn, want_seq=True)
        return result, max(seq or 0, 0)

    async def _run_write(self, fn: Callable[[MirrorTxn], T], *, want_seq: bool) -> tuple[T, int | None]:
        loop = asyncio.get_running_loop()
        result, seq = await loop.run_in_executor(self._writer, self._write, fn, want_seq)
        if seq is not None:
            self.advance(seq)
        return result, seq

    def watch(self) -> asyncio.Event:
        return self._tick

    def advance(self, seq: int) -> None:
        """A commit up to `seq` is known (ours or another daemon's): wake the long polls."""
        if seq > self.seq:
            self.seq = seq
            self._notify()

    def _notify(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def trim_changes(self, keep: int, max_age: timedelta) -> int:
        cutoff = rfc3339(datetime.now(UTC) - max_age) or ""
        return await self.transact(lambda txn: _trim(txn, self._last_seq(txn.sql), keep, cutoff))

    async def prune(self, retention: Retention) -> dict[str, int]:
        now = datetime.now(UTC)
        return await self.transact(lambda txn: prune_rows(txn.sql, retention, now))

    # -- reads --------------------------------------------------------------------------------

    async def read(self, fn: Callable[[Sql], T]) -> T:
        def run() -> T:
            sql, release = self._reader()
            try:
                return fn(sql)
            finally:
                release()

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def changes_since(self, since: int, limit: int) -> ChangeBatch:
        return await self.read(lambda sql: self._changes_since(sql, since, limit))

    async def accounts(self) -> list[MirrorAccount]:
        return await self.read(all_accounts)

    async def customers(self) -> dict[str, str]:
        return await self.read(
            lambda sql: dict(
                sql.execute(
                    f"SELECT customer_id, tenant FROM {CUSTOMERS} WHERE deleted_at IS NULL"
                ).fetchall()
            )
        )

    async def customer_emails(self) -> dict[str, str | None]:
        """Each live customer's email (None: none known), for reconciliation to compare."""
        return await self.read(
            lambda sql: dict(
                sql.execute(f"SELECT customer_id, email FROM {CUSTOMERS} WHERE deleted_at IS NULL").fetchall()
            )
        )

    async def last_seq(self) -> int:
        return await self.read(self._last_seq)

    async def ping(self) -> None:
        await self.read(lambda sql: sql.execute("SELECT 1").fetchone())

    async def snapshot(self, chunk: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Header, accounts, current usage, overrides, trailer: one read transaction (a consistent cut).

        Followers skip record types they do not know (overrides, for a sidecar older than them).
        """
        loop = asyncio.get_running_loop()
        sql, release = await loop.run_in_executor(self._readers, self._reader)
        month_start = rfc3339(calendar_month(datetime.now(UTC))[0])
        begin = loop.run_in_executor(self._readers, self._begin_snapshot, sql)
        try:
            seq = await asyncio.shield(begin)
        except BaseException:
            await asyncio.wait([begin])  # the worker is done with the connection before it goes back
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._readers, _end_read, sql, release)
            raise
        try:
            yield {"type": "snapshot", "seq": seq, "data_as_of": _now()}
            counts = {"accounts": 0, "usage": 0, "overrides": 0}
            for kind, query, params in (
                ("account", f"SELECT * FROM {ACCOUNTS} ORDER BY tenant", []),
                ("usage", _CURRENT_USAGE, [month_start]),
                (
                    "override",
                    f"SELECT tenant, feature, value, expires_at FROM {OVERRIDES} ORDER BY tenant, feature",
                    [],
                ),
            ):
                cursor = await loop.run_in_executor(self._readers, sql.execute, query, params)
                names = column_names(cursor)
                while rows := await loop.run_in_executor(self._readers, cursor.fetchmany, chunk):
                    for row in rows:
                        record = dict(zip(names, row, strict=True))
                        yield {"type": kind, kind: _snapshot_body(kind, record)}
                    counts[_COUNTS[kind]] += len(rows)
            yield {"type": "end", **counts}
        finally:
            await loop.run_in_executor(self._readers, _end_read, sql, release)

    def _changes_since(self, sql: Sql, since: int, limit: int) -> ChangeBatch:
        sql.execute(self.begin_read)
        try:
            last = self._last_seq(sql)
            oldest = sql.execute(f"SELECT min(seq) FROM {CHANGES}").fetchone()[0]
            rows = sql.execute(
                f"SELECT seq, kind, op, tenant, body FROM {CHANGES} WHERE seq > ? ORDER BY seq LIMIT ?",
                [since, limit],
            ).fetchall()
        finally:
            sql.execute("COMMIT")
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
    value = from_stored(record["value"])
    return usage_record(record["tenant"], record["code"], record["period_start"], value, record["gauge_at"])


def _end_read(sql: Sql, release: Callable[[], None]) -> None:
    try:
        sql.execute("COMMIT")
    finally:
        release()


def _trim(txn: MirrorTxn, top: int, keep: int, cutoff: str) -> int:
    """Never a change not numbered yet (PostgreSQL, ADR 0020): it has no position to be behind."""
    cursor = txn.sql.execute(
        f"DELETE FROM {CHANGES} WHERE seq IS NOT NULL AND (seq <= ? OR at < ?)", [top - keep, cutoff]
    )
    return int(cursor.rowcount)


def prune_rows(sql: Sql, retention: Retention, now: datetime) -> dict[str, int]:
    """Delete what retention no longer keeps; a counter of the current period is never deleted."""
    month_start = rfc3339(calendar_month(now)[0])
    events_before = rfc3339(now - retention.processed_events)
    usage_before = rfc3339(now - retention.usage_events)
    periods_before = rfc3339(now - retention.closed_periods)
    counts = {
        "processed_events": sql.execute(f"DELETE FROM {EVENTS} WHERE received_at < ?", [events_before]),
        # Never the newest event (its seq numbers the next one) nor one a sink has not delivered yet.
        "usage_events": sql.execute(
            f"DELETE FROM {USAGE_EVENTS} WHERE received_at < ? "
            f"AND seq < (SELECT max(seq) FROM {USAGE_EVENTS}) "
            f"AND seq <= COALESCE((SELECT min(seq) FROM {SINK_CURSORS}), seq)",
            [usage_before],
        ),
        "usage_counters": sql.execute(
            f"DELETE FROM {USAGE} WHERE period_start < ? AND period_start < COALESCE("
            f"(SELECT a.current_period_start FROM {ACCOUNTS} a WHERE a.tenant = {USAGE}.tenant), ?)",
            [periods_before, month_start],
        ),
        "usage_periods": sql.execute(f"DELETE FROM {USAGE_PERIODS} WHERE period_end < ?", [periods_before]),
        # Never a tenant's newest version: the lineage of the state in force now.
        "account_versions": sql.execute(
            f"DELETE FROM {ACCOUNT_VERSIONS} WHERE at < ? AND id < "
            f"(SELECT max(newer.id) FROM {ACCOUNT_VERSIONS} newer WHERE newer.tenant = {ACCOUNT_VERSIONS}.tenant)",
            [rfc3339(now - retention.account_versions)],
        ),
        "decision_records": sql.execute(
            f"DELETE FROM {DECISION_RECORDS} WHERE received_at < ?",
            [rfc3339(now - retention.decision_records)],
        ),
    }
    return {name: int(cursor.rowcount) for name, cursor in counts.items()}


def all_accounts(sql: Sql) -> list[MirrorAccount]:
    cursor = sql.execute(f"SELECT * FROM {ACCOUNTS} ORDER BY tenant")
    names = column_names(cursor)
    return [MirrorAccount.from_row(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
