"""Lease arithmetic, pure: what is free, and how much of it one holder gets.

The invariant the daemon keeps for each (tenant, metric, window), checked by the model in
tests/unit/test_lease_model.py: counted usage + what every live lease still holds <= limit. A
lease holds `granted - acked`: units granted to it that the daemon has not been told were
counted. A holder reports only spend the daemon *acknowledged* counting, so a unit is never in
neither term; a unit in both (counted, its acknowledgement not reported yet) only under-grants.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

# Below this many free units per live holder, the last units go one at a time (to whoever needs one).
LAST_UNITS_PER_HOLDER = 2
# A holder with no recent spend still weighs this much in the fair share (a newcomer gets a part).
RATE_FLOOR = 0.1


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str
    granted: int
    acked: int
    rate: float  # the holder's recent spend, units per second (its own report)
    expires_at: float

    @property
    def holds(self) -> int:
        return max(0, self.granted - self.acked)


@dataclass(frozen=True, slots=True)
class Ask:
    """One holder's request: renew, report, maybe take more (want 0 renews only), or release."""

    holder: str
    acked: int  # cumulative units of this lease the daemon acknowledged counting
    spent: int  # cumulative units of this lease the holder allowed
    want: int  # units it would like to hold
    need: int  # units the check waiting on this request needs (0: a refill ahead of need)
    rate: float
    release: bool = False


def free_units(limit: int, counted: int, leases: Iterable[Lease]) -> int:
    return limit - counted - sum(lease.holds for lease in leases)


def reported(lease: Lease, ask: Ask, rate: float, expires_at: float) -> Lease:
    """The lease after its holder's report: `acked` only grows and never passes `granted` (a stale
    request reaching a lease created again after expiry must not free units: the model found it)."""
    acked = min(lease.granted, max(lease.acked, ask.acked))
    return replace(lease, acked=acked, rate=rate, expires_at=expires_at)


def released(lease: Lease, ask: Ask) -> Lease:
    """On release the unspent part returns; what was spent stays held until acknowledged counted."""
    return replace(lease, granted=max(lease.acked, min(lease.granted, ask.spent)))


def grant_size(free: int, ask: Ask, rates: Iterable[float]) -> int:
    """How many more units `ask`'s holder gets: a share of `free` by recent rates (its own among
    `rates`, the live holders' including its own); near the end, only what a waiting check needs."""
    if free <= 0:
        return 0
    weights = [max(RATE_FLOOR, rate) for rate in rates]
    if free <= LAST_UNITS_PER_HOLDER * len(weights):
        return min(free, ask.need)  # a refill ahead of need would strand the last units
    share = math.ceil(free * max(RATE_FLOOR, ask.rate) / sum(weights))
    return min(free, max(ask.need, min(ask.want, share)))
