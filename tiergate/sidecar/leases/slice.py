"""One lease as its holder keeps it (pure: no I/O, the clock passed in).

All counts are cumulative for the lease: `granted` (the highest the daemon answered), `spent`
(units this sidecar allowed), `acked` (spent units the daemon acknowledged counting). What can
still be spent is `granted - spent`; the daemon is told `acked`, never `spent`, so it never frees
a unit whose usage has not reached it (tests/unit/test_lease_model.py shows why).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW_S = 10.0  # recent spend rate: units over the last this many seconds
DEADLINE_SHARE = 0.8  # a lease is spent from until this share of its TTL after the daemon's answer
REFILL_AHEAD_S = 10.0  # ask for about this many seconds of spend at the recent rate
LOW_WATER_S = 1.0  # refill ahead of need when less than this many seconds of spend remain
MIN_WANT = 4  # the least a holder asks for while units are plentiful (the daemon shrinks it near the end)


def new_holder_id() -> str:
    """A lease's holder name: random per lease, so a restarted or lapsed holder never reuses one."""
    return os.urandom(8).hex()


@dataclass
class Slice:
    tenant: str
    code: str
    window: str | None = None  # the usage period's start the daemon leased (None: not asked yet)
    holder: str = field(default_factory=new_holder_id)
    granted: int = 0
    spent: int = 0
    acked: int = 0
    unlimited: bool = False
    deadline: float = 0.0  # monotonic: no spending at or after it (the daemon may expire the lease)
    window_end: float = 0.0  # wall clock, epoch seconds: its units count in no later window
    exhausted: bool = False  # the daemon's last answer left nothing free for anyone
    last_used: float = 0.0
    held: int = 0  # spent units that active holds took: the lease is renewed, not released, meanwhile
    spends: deque[tuple[float, int]] = field(default_factory=deque)
    recent: int = 0  # the units in `spends`

    def live(self, now: float, wall: float) -> bool:
        return now < self.deadline and wall < self.window_end

    def available(self, now: float, wall: float) -> int:
        return self.granted - self.spent if self.live(now, wall) else 0

    def usable(self, now: float, wall: float, quantity: int) -> bool:
        return self.live(now, wall) and (self.unlimited or self.available(now, wall) >= quantity)

    def spend(self, now: float, quantity: int) -> None:
        self.spent += quantity
        self.last_used = now
        self.spends.append((now, quantity))
        self.recent += quantity

    def rate(self, now: float) -> float:
        while self.spends and self.spends[0][0] < now - RATE_WINDOW_S:
            self.recent -= self.spends.popleft()[1]
        return self.recent / RATE_WINDOW_S

    def want(self, now: float, need: int) -> int:
        """Units to ask for: what a check waits for plus a few seconds of spend at the recent rate."""
        return need + max(MIN_WANT, round(self.rate(now) * REFILL_AHEAD_S))

    def low(self, now: float, wall: float) -> bool:
        """Worth refilling ahead of need (off the request path)."""
        if self.unlimited or self.exhausted:
            return False
        return self.available(now, wall) <= max(1.0, self.rate(now) * LOW_WATER_S)

    def answered(self, sent_at: float, answer: dict[str, object]) -> None:
        """Adopt the daemon's answer to a request sent at `sent_at` (monotonic)."""
        self.window = str(answer["window"])
        self.unlimited = bool(answer.get("unlimited"))
        granted, free, ttl_s = answer.get("granted", 0), answer.get("free", 0), answer.get("ttl_s", 0)
        end = answer.get("window_end_epoch", 0)
        self.granted = max(self.granted, granted if isinstance(granted, int) else 0)
        self.exhausted = isinstance(free, int) and free <= 0
        self.window_end = float(end) if isinstance(end, int | float) else 0.0
        lease_s = float(ttl_s) * DEADLINE_SHARE if isinstance(ttl_s, int | float) else 0.0
        self.deadline = max(self.deadline, sent_at + lease_s)

    def ack(self, units: int) -> None:
        self.acked += units
