"""Which daemon runs the scheduled jobs (reconcile, trims, retention): the leader.

With SQLite there is one daemon, always the leader. With PostgreSQL the leader is whoever holds a
session-level advisory lock on a connection of its own; the others try to take it every
`leader_check_s`. When the leader dies its connection closes, PostgreSQL releases the lock, and
another daemon takes over at its next try; a leader that cannot reach the database steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from tiergate.settings_errors import scrub_url

log = structlog.get_logger("tiergate.leader")


class Leader(Protocol):
    @property
    def is_leader(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class SoleLeader:
    """One daemon on one SQLite file: it leads."""

    is_leader = True

    def status(self) -> dict[str, Any]:
        return {"is_leader": True, "election": "none (SQLite: one daemon)"}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class PostgresLeader:
    def __init__(self, url: str, lock_key: int, check_s: float) -> None:
        self._url = url
        self._key = lock_key
        self._check_s = check_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.is_leader = False
        self.since: str | None = None
        self.last_error: str | None = None
        self.changes = 0

    def status(self) -> dict[str, Any]:
        return {
            "is_leader": self.is_leader,
            "election": "postgresql advisory lock",
            "since": self.since,
            "check_s": self._check_s,
            "last_error": self.last_error,
        }

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leader-election")

    async def stop(self) -> None:
        """Close the connection (releasing the lock) from the election task itself, not by cancelling it."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        self._set(False)

    async def _run(self) -> None:
        import psycopg  # only with PostgreSQL

        while not self._stopping.is_set():
            try:
                timeout = max(1, int(self._check_s * 2))
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=timeout
                ) as conn:
                    while not self._stopping.is_set():
                        await self._hold_or_try(conn)
                        await self._pause()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {scrub_url(str(exc), self._url)}"
                log.warning("leader_connection_lost", error=self.last_error)
            self._set(False)
            await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._check_s)

    async def _hold_or_try(self, conn: Any) -> None:
        if self.is_leader:
            # Still connected means still holding: a failed ping raises and steps down.
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout=self._check_s * 2)
            return
        cursor = await asyncio.wait_for(
            conn.execute("SELECT pg_try_advisory_lock(%s)", [self._key]), timeout=self._check_s * 2
        )
        row = await cursor.fetchone()
        if row and row[0]:
            self._set(True)

    def _set(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        self.is_leader = leading
        self.since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if leading else None
        self.changes += 1
        log.info("leader_elected" if leading else "leader_stepped_down")


def when_leading(leader: Leader, job: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[None]]:
    """A scheduled job that does nothing on a daemon that is not the leader."""

    async def run(*args: Any) -> None:
        if leader.is_leader:
            await job(*args)

    return run
