"""The sidecars following this daemon, as its feed sees them: each one's position and last contact.

Kept in memory per daemon process (a follower long-polls one daemon at a time); a follower not
seen for FORGET_AFTER_S is dropped from the view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FORGET_AFTER_S = 3600.0
MAX_FOLLOWERS = 10_000


@dataclass
class Follower:
    name: str
    address: str
    position: int
    seen: float  # time.time() of its last feed request


class Fleet:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._followers: dict[str, Follower] = {}

    def saw(self, name: str, address: str, position: int) -> None:
        """A feed request from `name` at `position` (the seq it has applied)."""
        if name not in self._followers and len(self._followers) >= MAX_FOLLOWERS:
            self._forget(self.clock())
            if len(self._followers) >= MAX_FOLLOWERS:
                return
        self._followers[name] = Follower(name[:200], address, position, self.clock())

    def view(self, head: int) -> list[dict[str, Any]]:
        """Each follower with its lag behind `head`, the most behind first."""
        now = self.clock()
        self._forget(now)
        rows = [
            {
                "name": f.name,
                "address": f.address,
                "position": f.position,
                "behind": max(head - f.position, 0),
                "last_seen_s": round(now - f.seen, 1),
            }
            for f in self._followers.values()
        ]
        return sorted(rows, key=lambda r: (-r["behind"], r["name"]))

    def _forget(self, now: float) -> None:
        for name in [n for n, f in self._followers.items() if now - f.seen > FORGET_AFTER_S]:
            del self._followers[name]
