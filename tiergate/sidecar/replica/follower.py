"""Keeps the replica true: bootstrap from the daemon's snapshot, then follow its change feed.

Writes happen on one worker thread with its own connection (the event loop keeps answering),
each batch in one transaction together with the new position, so a restart resumes from the
replica on disk and a reader never sees a half-applied change. While the daemon is away the
replica keeps serving (fail-static) and its age grows; retries back off with jitter.

The follower never dies silently: every failure, the daemon's (unreachable, a bad answer) or
the replica's own (disk full, "database is locked" during an import), is caught, shown
(`connected=false`, `last_error`, `failing`, a metric), retried with backoff, and recovers on its
own once the cause is gone. A replica-side failure is pod-local, so it also fails readiness.

A damaged file (SQLite says "malformed" or "not a database", to the follower's writes or to the
reader's reads, see damage.py) is not retried in place: on its next step the follower sets the
file aside (kept for inspection), starts a new one and downloads a snapshot into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from tiergate.feed import (
    FOLLOWER_HEADER,
    KNOWN_KINDS,
    FeedAccount,
    FeedChange,
    FeedCredits,
    FeedOverride,
    FeedUsage,
    follower_name,
    refused_token,
    reported_lag,
)
from tiergate.periods import utc_now_text
from tiergate.sidecar.replica.damage import ReplicaDamage, move_aside
from tiergate.sidecar.replica.store import ReplicaWriter, open_replica, read_meta

log = structlog.get_logger("tiergate.follower")

LONG_POLL_S = 10
STAGING_PREFIX = ".snapshot-"  # download folders beside the replica; leftovers are removed at start


class FeedGapError(Exception):
    """The daemon no longer retains changes since our position: re-snapshot."""


class FeedProtocolError(Exception):
    """The daemon answered something we cannot apply."""


class FeedAuthError(FeedProtocolError):
    """The daemon refused our bearer token: a setting to fix, retried in case it is being rotated."""


@dataclass
class FollowerStatus:
    connected: bool = False
    position: int | None = None
    # "daemon" (unreachable, a bad answer) or "replica" (this pod's own disk or file) while the
    # latest attempt failed; None once a step succeeds again.
    failing: str | None = None
    # While the latest failure is this pod's volume being full: answers still come from memory.
    disk_full: bool = False
    consecutive_failures: int = 0
    failures: dict[str, int] = field(default_factory=lambda: {"daemon": 0, "replica": 0})
    last_error: str | None = None
    last_error_at: str | None = None
    last_change_at: str | None = None
    last_contact_at: str | None = None
    # How far the daemon's own mirror may be behind Stripe, as its last answer said (seconds).
    daemon_lag_s: float = 0.0
    snapshots: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "failures": dict(self.failures)}


@dataclass
class Follower:
    daemon_url: str
    token: str | None
    replica_path: Path
    # Long-polls end at least this often, refreshing data_as_of on an idle feed: half the
    # staleness budget keeps a connected sidecar from ever looking stale.
    poll_wait_s: float = LONG_POLL_S
    backoff_max_s: float = 15.0
    busy_timeout_s: float = 10.0
    status: FollowerStatus = field(default_factory=FollowerStatus)
    # Told which tenants a batch touched (None: all of them), so cached decisions are dropped.
    on_applied: Callable[[set[str] | None], None] | None = None
    # Shared with the reader: damage either of them met; told when a new file replaced it.
    damage: ReplicaDamage = field(default_factory=ReplicaDamage)
    on_set_aside: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-writer")
        self._writer: ReplicaWriter | None = None
        self._task: asyncio.Task[None] | None = None
        # time.monotonic() of the last answer from the daemon (None: none yet in this process).
        self.last_contact: float | None = None

    async def start(self) -> None:
        await self._on_writer(lambda: clean_staging(self.replica_path))
        self._writer = await self._on_writer(
            lambda: ReplicaWriter(open_replica(self.replica_path, self.busy_timeout_s))
        )
        self.status.position = await self._on_writer(lambda: read_meta(self._db()).position)
        self._task = asyncio.create_task(self._run(), name="replica-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            writer = self._writer
            await self._on_writer(writer.db.close)
        self._executor.shutdown(wait=True)

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers[FOLLOWER_HEADER] = follower_name()  # the daemon's fleet view names each follower
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.poll_wait_s + 10)
        async with aiohttp.ClientSession(self.daemon_url, headers=headers, timeout=timeout) as session:
            while True:
                try:
                    if self.damage.state == "damaged":
                        await self._set_damaged_file_aside()
                    await self._step(session)
                except Exception as exc:  # any failure: shown, retried; never the end of the task
                    self._failed(exc)
                    await asyncio.sleep(self._backoff())
                else:
                    self._recovered()

    def _backoff(self) -> float:
        """Exponential from 0.2 s, capped, with jitter; each outage starts from the beginning."""
        ceiling = min(self.backoff_max_s, 0.2 * 2.0 ** min(self.status.consecutive_failures - 1, 16))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _step(self, session: aiohttp.ClientSession) -> None:
        """One snapshot when there is no position, then one long-poll."""
        fresh = self.status.position is None
        if fresh:
            await self._snapshot(session)
        try:
            await self._poll(session)
        except FeedGapError as exc:
            if fresh:  # a snapshot's own position is already gone: back off, don't spin
                raise FeedProtocolError("the daemon's snapshot is older than its change log") from exc
            log.warning("feed_gap", position=self.status.position)
            self.status.position = None

    async def _set_damaged_file_aside(self) -> None:
        """Move the damaged file aside, start an empty one, and forget the position: the next
        step downloads a snapshot (the in-memory index answers meanwhile)."""
        writer = self._require_writer()
        reason = self.damage.problem or "damaged"

        def swap() -> Path:
            writer.db.close()
            try:
                return move_aside(self.replica_path, reason)
            finally:  # the new file, or the same one again when it could not be moved
                self._writer = ReplicaWriter(open_replica(self.replica_path, self.busy_timeout_s))

        moved = await self._on_writer(swap)
        self.damage.set_aside(moved)
        self.status.position = None
        if self.on_set_aside is not None:
            self.on_set_aside()

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        params = {"since": str(self.status.position), "wait": f"{self.poll_wait_s:g}", "kinds": FEED_KINDS}
        async with session.get("/v1/feed/changes", params=params) as response:
            if response.status == 410:
                raise FeedGapError()
            await _expect_ok(response, token_sent=self.token is not None)
            body = await response.json()
        self._contact(reported_lag(body))
        changes, last_seq, as_of = _parse_changes(body)
        writer = self._require_writer()
        if changes:
            touched = await self._on_writer(
                lambda: writer.apply_changes(changes, position=last_seq, data_as_of=as_of)
            )
            if self.on_applied is not None:
                self.on_applied(touched)
            self.status.batches += 1
            self.status.last_change_at = utc_now_text()
        else:
            await self._on_writer(lambda: writer.mark_current(as_of))
        self.status.position = max(last_seq, self.status.position or 0)
        self._connected()

    async def _snapshot(self, session: aiohttp.ClientSession) -> None:
        # Staged on the replica's own volume (not /tmp, often a small memory-backed one).
        staging = self.replica_path.parent
        with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, dir=staging) as tmp:
            path = Path(tmp) / "snapshot.ndjson"
            async with session.get("/v1/feed/snapshot") as response:
                await _expect_ok(response, token_sent=self.token is not None)
                with path.open("wb") as out:
                    async for chunk in response.content.iter_chunked(1 << 16):
                        out.write(chunk)
            self._contact(_header_lag(path))
            header = await self._on_writer(lambda: _apply_snapshot(self._require_writer(), path))
        if self.on_applied is not None:
            self.on_applied(None)
        self.status.position = header["seq"]
        self.status.snapshots += 1
        self.status.last_change_at = utc_now_text()
        log.info("replica_snapshot_loaded", position=header["seq"], accounts=header["accounts"])
        self._connected()
        self._recovered()  # a snapshot in place is a success of its own (e.g. after a damaged file)

    # -- helpers -------------------------------------------------------------------------

    def seconds_since_contact(self) -> float | None:
        """Monotonic seconds since the daemon last answered (None: not yet in this process)."""
        return None if self.last_contact is None else time.monotonic() - self.last_contact

    def data_age(self) -> float | None:
        """How far the replica may be behind Stripe: seconds since the daemon last answered
        (monotonic) plus the lag of the daemon's own mirror it reported then."""
        since = self.seconds_since_contact()
        return None if since is None else since + self.status.daemon_lag_s

    def _contact(self, daemon_lag_s: float) -> None:
        self.last_contact = time.monotonic()
        self.status.last_contact_at = utc_now_text()
        self.status.daemon_lag_s = daemon_lag_s

    def _connected(self) -> None:
        if not self.status.connected:
            log.info("daemon_connected", position=self.status.position)
        self.status.connected = True

    def _recovered(self) -> None:
        if self.status.failing is not None:
            log.info("follower_recovered", after_failures=self.status.consecutive_failures)
        self.status.failing = None
        self.status.disk_full = False
        self.status.consecutive_failures = 0

    def _failed(self, exc: BaseException) -> None:
        self.damage.report(exc, "follower")
        kind = failure_kind(exc)
        self.status.connected = False
        self.status.failing = kind
        self.status.disk_full = is_disk_full(exc)
        self.status.consecutive_failures += 1
        self.status.failures[kind] += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        self.status.last_error_at = utc_now_text()
        if isinstance(exc, FeedAuthError):
            log.error("daemon_auth_failed", error=str(exc), setting="TIERGATE_FEED_TOKEN")
            return
        event = "daemon_unreachable" if kind == "daemon" else "replica_write_failed"
        log.warning(
            event,
            error=self.status.last_error,
            position=self.status.position,
            consecutive=self.status.consecutive_failures,
            exc_info=kind == "replica" and self.status.consecutive_failures == 1,
        )

    def _require_writer(self) -> ReplicaWriter:
        assert self._writer is not None, "start() opens the writer"
        return self._writer

    def _db(self) -> Any:
        return self._require_writer().db.conn

    async def _on_writer(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from the OS, or SQLite's SQLITE_FULL ("database or disk is full")."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def failure_kind(exc: BaseException) -> str:
    """ "replica" for this pod's own storage (disk full, locked, damaged), else "daemon"."""
    if isinstance(exc, aiohttp.ClientError | TimeoutError | FeedProtocolError | FeedGapError):
        return "daemon"
    if isinstance(exc, sqlite3.Error | OSError):
        return "replica"
    return "daemon"


def clean_staging(replica_path: Path) -> int:
    """Remove snapshot downloads a crash left beside the replica; returns how many."""
    removed = 0
    if replica_path.parent.is_dir():
        for leftover in replica_path.parent.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
            removed += 1
    if removed:
        log.info("snapshot_staging_cleaned", folders=removed)
    return removed


async def _expect_ok(response: aiohttp.ClientResponse, *, token_sent: bool) -> None:
    refused = refused_token(response.status, response.url.path, token_sent=token_sent)
    if refused is not None:
        raise FeedAuthError(refused)
    if response.status != 200:
        text = (await response.text())[:300]
        raise FeedProtocolError(f"daemon answered {response.status} to {response.url.path}: {text}")


# The entry kinds this sidecar applies; a daemon leaves out any other (see GET /v1/feed/changes).
FEED_KINDS = ",".join(sorted(KNOWN_KINDS))


def _parse_changes(body: Any) -> tuple[list[FeedChange], int, datetime]:
    try:
        changes = [FeedChange.model_validate(c) for c in body["changes"]]
        return changes, int(body["last_seq"]), datetime.fromisoformat(body["data_as_of"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FeedProtocolError(f"malformed change batch: {exc}") from exc


def _apply_snapshot(writer: ReplicaWriter, path: Path) -> dict[str, Any]:
    """Replace the replica with the snapshot file's content in one transaction.

    The trailer line carries the counts: a truncated download is refused before anything is
    replaced, and a count mismatch rolls the transaction back.
    """
    with path.open("rb") as lines:
        header = json.loads(lines.readline())
    trailer = _last_line(path)
    if header.get("type") != "snapshot" or trailer.get("type") != "end":
        raise FeedProtocolError("snapshot lacks its header or trailer line: truncated download")

    def records(kind: str) -> Iterator[dict[str, Any]]:
        with path.open("rb") as lines:
            for line in lines:
                record = json.loads(line)
                if record["type"] == kind:
                    yield record[kind]

    n_accounts, _ = writer.replace_all(
        (FeedAccount.model_validate(a) for a in records("account")),
        (FeedUsage.model_validate(u) for u in records("usage")),
        data_as_of=datetime.fromisoformat(header["data_as_of"]),
        position=int(header["seq"]),
        source="snapshot",
        expect_accounts=trailer.get("accounts"),
        overrides=(FeedOverride.model_validate(o) for o in records("override")),
        credits=(FeedCredits.model_validate(c) for c in records("credits")),
    )
    return {"seq": int(header["seq"]), "accounts": n_accounts}


def _header_lag(path: Path) -> float:
    """The daemon's mirror lag from a snapshot's header line (0 when absent or unreadable)."""
    with path.open("rb") as lines:
        first = lines.readline()
    try:
        return reported_lag(json.loads(first))
    except ValueError:
        return 0.0


def _last_line(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 4096))
        tail = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        record: dict[str, Any] = json.loads(tail)
    except ValueError:
        return {}
    return record
