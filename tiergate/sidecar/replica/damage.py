"""A damaged replica is a cache, not a crash: checked at start, watched at run time, moved aside,
downloaded again.

The replica holds nothing the daemon does not (usage waiting for delivery lives in the outbox,
another file), so a file SQLite cannot read is set aside for inspection and the follower takes
a fresh snapshot. At start `PRAGMA quick_check` finds it; at run time any read or write that
SQLite answers with "database disk image is malformed" (SQLITE_CORRUPT) or "file is not a
database" (SQLITE_NOTADB) reports it to `ReplicaDamage`, and the follower sets the file aside on
its next step while the in-memory index keeps answering. Without a daemon (static mode) there
is nothing to download it from: the sidecar refuses to start, or at run time says so.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tiergate.log import host_safe_logger
from tiergate.periods import utc_now_text

log = host_safe_logger("tiergate.replica")  # also runs inside a host app (LocalDecisions)

SIDE_FILES = ("-wal", "-shm")  # SQLite's write-ahead log and its index travel with the file
DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
DamageState = Literal["ok", "damaged", "downloading"]


def problem(path: Path) -> str | None:
    """What `PRAGMA quick_check` finds wrong with the replica at `path` (None: usable or absent)."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    found = [str(row[0]) for row in rows if row[0] != "ok"]
    return "; ".join(found[:5]) or None


def move_aside(path: Path, reason: str) -> Path:
    """Rename the replica (and its -wal, -shm) to `<name>.damaged-<unix time>`; returns the new path."""
    target = path.with_name(f"{path.name}.damaged-{time.time_ns() // 1_000_000}")
    for suffix in ("", *SIDE_FILES):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    log.error("replica_damaged", path=str(path), moved_to=str(target), problem=reason)
    return target


def is_damage(exc: BaseException) -> bool:
    """True when SQLite says the file itself is damaged (not locked, not full, not missing)."""
    for error in (exc, exc.__cause__):
        if isinstance(error, sqlite3.DatabaseError):
            code = getattr(error, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in DAMAGE_CODES:
                return True
            if code is None and ("malformed" in str(error) or "not a database" in str(error)):
                return True
    return False


@dataclass
class ReplicaDamage:
    """What this process knows of damage to its replica file, for /v1/status and /metrics.

    `damaged` from the first report until the follower has set the file aside; `downloading`
    from then until the new snapshot is loaded into the in-memory index; `ok` otherwise.
    """

    state: DamageState = "ok"
    problem: str | None = None
    detected_by: str | None = None
    detected_at: str | None = None
    moved_to: str | None = None
    detections: int = 0  # damaged files found, at start and at run time
    recoveries: int = 0  # re-downloaded replicas loaded after a run-time detection

    @property
    def active(self) -> bool:
        return self.state != "ok"

    def report(self, exc: BaseException, where: str) -> bool:
        """Record `exc` if it is damage (the first report of an episode logs); True when it was."""
        if not is_damage(exc):
            return False
        if self.state == "ok":
            self.state = "damaged"
            self.problem = f"{type(exc).__name__}: {exc}"
            self.detected_by = where
            self.detected_at = utc_now_text()
            self.moved_to = None
            self.detections += 1
            log.error(
                "replica_damaged_at_run_time",
                problem=self.problem,
                detected_by=where,
                action="answering from memory; the follower sets the file aside and downloads a snapshot",
            )
        return True

    def found_at_start(self, reason: str, moved_to: Path) -> None:
        """`quick_check` found damage before anything was read: already moved aside."""
        self.problem, self.detected_by, self.detected_at = reason, "start", utc_now_text()
        self.moved_to = str(moved_to)
        self.detections += 1

    def set_aside(self, moved_to: Path) -> None:
        self.state = "downloading"
        self.moved_to = str(moved_to)

    def recovered(self) -> None:
        if self.state == "downloading":
            self.state = "ok"
            self.recoveries += 1
            log.info("replica_damage_recovered", moved_to=self.moved_to, recoveries=self.recoveries)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
