"""Leases held by this sidecar: take units for a reserve, refill off the request path, renew
while used, release at shutdown, and report what the daemon acknowledged counting.

`take` runs under the recorder's per-tenant lock, so one tenant's reserves and holds meet their
slice one at a time. A reserve that needs more than its slice holds starts (or joins) one refill
and waits for it at most `wait_s`; no unit is ever spent that the daemon did not grant. A hold
`draw`s its units and, when it ends, `assign`s them to the usage it recorded (acknowledged like a
reserve's) and gives the rest back to its slice while that one is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from tiergate.sidecar.leases.client import LeaseClient, LeaseUnavailableError
from tiergate.sidecar.leases.slice import Slice

log = structlog.get_logger("tiergate.leases")

RENEW_EVERY_S = 2.0  # how often held leases are looked at for renewal and release
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass
class LeaseStats:
    refills: int = 0
    refill_failures: int = 0
    waits: int = 0  # reserves that waited on a refill
    unavailable: int = 0  # reserves denied `quota_unavailable`
    refill_seconds: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    refill_seconds_sum: float = 0.0
    last_error: str | None = None

    def timed(self, seconds: float) -> None:
        self.refill_seconds[sum(seconds > b for b in LATENCY_BUCKETS)] += 1
        self.refill_seconds_sum += seconds


@dataclass
class Drawn:
    """Units a hold took from a slice (0 from an unlimited one)."""

    lease: Slice
    units: int


class Leases:
    def __init__(
        self,
        client: LeaseClient,
        *,
        wait_s: float,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.wait_s = wait_s
        self.wall = wall
        self.clock = clock
        self.stats = LeaseStats()
        self._slices: dict[tuple[str, str], Slice] = {}
        self._refills: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._spent_by: dict[tuple[str, str], list[tuple[Slice, int]]] = {}  # (tenant, tid) -> slices, units
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def take(self, tenant: str, code: str, quantity: int) -> bool:
        """Spend `quantity` from the tenant's lease of `code`, refilling once if it must."""
        lease = self._slice(tenant, code)
        now, wall = self.clock(), self.wall()
        if not lease.usable(now, wall, quantity):
            self.stats.waits += 1
            refill = self._refill(lease, need=quantity - lease.available(now, wall))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(refill), self.wait_s)
            lease = self._slice(tenant, code)  # a new window may have replaced it
            now, wall = self.clock(), self.wall()
            if not lease.usable(now, wall, quantity):
                self.stats.unavailable += 1
                return False
        lease.spend(now, quantity)
        if lease.low(now, wall) and (tenant, code) not in self._refills:
            self._refill(lease, need=0)
        return True

    def spent_as(self, tenant: str, code: str, units: Iterable[tuple[str, int]]) -> None:
        """The transaction ids (and units) a granted reserve recorded: their acknowledgements count."""
        lease = self._slices.get((tenant, code))
        if lease is None or lease.unlimited:
            return
        for tid, value in units:
            self._spent_by[(tenant, tid)] = [(lease, value)]

    async def draw(self, tenant: str, code: str, quantity: int) -> Drawn | None:
        """Take `quantity` for a hold (as `take`, under the tenant's lock); None: the lease cannot."""
        if not await self.take(tenant, code, quantity):
            return None
        lease = self._slices[(tenant, code)]  # the slice `take` spent from: no await since
        if lease.unlimited:
            return Drawn(lease, 0)
        lease.held += quantity
        return Drawn(lease, quantity)

    def assign(self, tenant: str, draws: Sequence[Drawn], events: Iterable[tuple[str, int]]) -> None:
        """A hold ended: its drawn units go, in order, to the usage events it recorded (their
        acknowledgements free them at the daemon, as a reserve's do); units beyond the draws were not
        leased (`overage: allow`). Drawn units left over return to their slice while it is the live
        one (the daemon still counts them out to this holder); otherwise they stay out until that
        lease expires at the daemon: under-use, never an overshoot."""
        left = [Drawn(d.lease, d.units) for d in draws if d.units]  # copies: spent down below
        for d in draws:
            d.lease.held -= d.units
        for tid, value in events:
            parts: list[tuple[Slice, int]] = []
            while value and left:
                units = min(value, left[0].units)
                parts.append((left[0].lease, units))
                value -= units
                left[0].units -= units
                if not left[0].units:
                    left.pop(0)
            if parts:
                self._spent_by[(tenant, tid)] = parts
        now, wall = self.clock(), self.wall()
        for rest in left:
            lease = rest.lease
            if self._slices.get((lease.tenant, lease.code)) is lease and lease.live(now, wall):
                lease.spent -= rest.units

    def delivered(self, events: Iterable[tuple[str, str]]) -> None:
        """(tenant, transaction id) the daemon answered for (counted, a duplicate, or refused)."""
        for key in events:
            for lease, units in self._spent_by.pop(key, ()):
                lease.ack(units)

    def _slice(self, tenant: str, code: str) -> Slice:
        """The tenant's current slice of `code`; a lapsed one (its deadline passed unrenewed: the
        daemon will expire it) is left to expire and a new holder starts from nothing."""
        key = (tenant, code)
        lease = self._slices.get(key)
        lapsed = lease is not None and lease.window is not None and not lease.live(self.clock(), self.wall())
        if lease is None or (lapsed and key not in self._refills):
            lease = self._slices[key] = Slice(tenant, code)
        return lease

    def _refill(self, lease: Slice, need: int) -> asyncio.Task[None]:
        key = (lease.tenant, lease.code)
        running = self._refills.get(key)
        if running is None or running.done():
            running = self._refills[key] = asyncio.create_task(
                self._exchange(lease, need), name="lease-refill"
            )
        return running

    async def _exchange(self, lease: Slice, need: int, *, release: bool = False) -> None:
        if release:  # nothing more is spent from it: the next reserve starts a new lease
            lease.granted = min(lease.granted, lease.spent)
            if self._slices.get((lease.tenant, lease.code)) is lease:
                del self._slices[(lease.tenant, lease.code)]
        sent_at = self.clock()
        want = 0 if release else lease.want(sent_at, need)
        try:
            answer = await self.client.exchange(
                lease, want=want, need=need, rate=lease.rate(sent_at), release=release
            )
        except LeaseUnavailableError as exc:
            self.stats.refill_failures += 1
            self.stats.last_error = str(exc)
            log.warning("lease_exchange_failed", tenant=lease.tenant, code=lease.code, error=str(exc))
            return
        finally:
            if self._refills.get((lease.tenant, lease.code)) is asyncio.current_task():
                del self._refills[(lease.tenant, lease.code)]
        self.stats.refills += 1
        self.stats.timed(self.clock() - sent_at)
        current = self._slices.get((lease.tenant, lease.code))
        if lease.window is not None and answer["window"] != lease.window and current is lease:
            lease = self._slices[(lease.tenant, lease.code)] = Slice(
                lease.tenant, lease.code, holder=lease.holder
            )
        lease.answered(sent_at, answer)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                await self.renew()
            except Exception:
                log.exception("lease_renewal_crashed")

    async def renew(self) -> None:
        """Renew leases near their deadline; release idle ones (a lease that active holds drew from
        is renewed while they last: the daemon must not free their units before their usage)."""
        now = self.clock()
        for key, lease in list(self._slices.items()):
            if lease.unlimited or lease.window is None or key in self._refills:
                continue
            if now - lease.last_used > RENEW_EVERY_S * 5 and not lease.held:
                await self._exchange(lease, 0, release=True)
            elif lease.deadline - now < RENEW_EVERY_S * 2:
                await self._exchange(lease, 0)

    async def close(self) -> None:
        """Stop renewing and give back every unspent unit (what was spent stays until counted)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        held = [lease for lease in self._slices.values() if not lease.unlimited and lease.window is not None]
        await asyncio.gather(*(self._exchange(lease, 0, release=True) for lease in held))

    def held(self) -> tuple[int, int]:
        """(leases held, units they can still spend)."""
        now, wall = self.clock(), self.wall()
        held = [lease for lease in self._slices.values() if lease.window is not None and not lease.unlimited]
        return len(held), sum(max(0, lease.available(now, wall)) for lease in held)

    def status(self) -> dict[str, object]:
        held, units = self.held()
        return {
            "held": held,
            "units": units,
            "awaiting_ack": len(self._spent_by),
            "refills": self.stats.refills,
            "refill_failures": self.stats.refill_failures,
            "waits": self.stats.waits,
            "quota_unavailable": self.stats.unavailable,
            "last_error": self.stats.last_error,
        }
