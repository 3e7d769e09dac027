"""A damaged replica is a cache, not a crash: checked at start, moved aside, downloaded again.

The replica holds nothing the daemon does not (usage waiting for delivery lives in the outbox,
another file), so a file SQLite cannot read is set aside for inspection and the follower takes
a fresh snapshot. Without a daemon (static mode) there is nothing to download it from: the
sidecar refuses to start and says so.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import structlog

log = structlog.get_logger("tiergate.replica")

SIDE_FILES = ("-wal", "-shm")  # SQLite's write-ahead log and its index travel with the file


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
    target = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    for suffix in ("", *SIDE_FILES):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    log.error("replica_damaged", path=str(path), moved_to=str(target), problem=reason)
    return target
