"""Read-your-writes: usage this sidecar accepted that its replica's counters do not include yet.

Every event committed to the outbox adds its value here. It stays counted until the replica
provably includes it: the daemon's answer to a delivery names the change-log seq S at which the
event's counter was committed (`confirm`), and once the replica's position reaches S (`settle`)
the replica's counter holds it, so the pending value is dropped in the same step that the
authoritative one becomes visible. A decision reads its counters through `usage`: the
replica's, read at one position, plus what the replica does not include yet. See
docs/adr/0004-usage-read-your-writes.md for the orderings this covers.

The ledger is built first and handed to the decision service, which subscribes to its changes;
the outbox adds and confirms, delivery opens and closes flights, decisions read.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tiergate.amounts import Amount, add, negate
from tiergate.sidecar.replica.store import ReplicaReader

Key = tuple[str, str, str]  # (tenant, code, period_start)


@dataclass
class Gauge:
    """The newest reading of a gauge (`aggregation: latest`) this sidecar accepted: it replaces the
    replica's value until the replica includes it (confirmed at `seq`, and the replica got there)."""

    at: float  # the event's timestamp: an older reading never replaces a newer one
    value: Amount
    row: int  # its outbox row
    seq: int | None = None


_NOTHING: Mapping[str, Amount] = {}

# Longest a decision waits for a usage delivery's answer when the replica may already hold it.
FLIGHT_WAIT_S = 0.5


class UsageLedger:
    """In-memory totals per (tenant, period_start) and code; owned by the event-loop thread."""

    def __init__(self) -> None:
        # Told of every (tenant, code) whose totals change, so answers cached for it are dropped.
        self._listeners: list[Callable[[str, str | None], object]] = []
        self._totals: dict[tuple[str, str], dict[str, Amount]] = {}
        self._periods: dict[str, set[str]] = {}  # tenant -> the period starts of its keys with totals
        # (seq, tie-breaker, deltas): confirmed by the daemon, waiting for the replica to reach seq.
        self._confirmed: list[tuple[int, int, dict[Key, Amount]]] = []
        self._ties = itertools.count()
        # The delivery in flight: its (tenant, period_start)s, and the highest position that
        # certainly does not include it (the replica's when it left, or the previous answer's seq).
        self._flight: set[tuple[str, str]] = set()
        self._flight_tenants: set[str] = set()
        self._flight_floor: int | None = None
        self._flight_done: asyncio.Event | None = None
        self._gauges: dict[str, dict[str, Gauge]] = {}  # tenant -> code -> newest reading accepted here
        self._gauge_seqs: list[tuple[int, str, str, int]] = []  # (seq, tenant, code, row), confirmed

    def subscribe(self, listener: Callable[[str], object]) -> None:
        """Told the tenant whose pending usage changed."""
        self._listeners.append(lambda tenant, code: listener(tenant))

    def subscribe_usage(self, listener: Callable[[str, str | None], object]) -> None:
        """Told the tenant and the counter's code (None: any of its counters) that changed."""
        self._listeners.append(listener)

    def begin_flight(self, keys: Iterable[Key], floor: int | None) -> None:
        self._flight = {(tenant, period_start) for tenant, _, period_start in keys}
        self._flight_tenants = {tenant for tenant, _ in self._flight}
        self._flight_floor = floor
        self._flight_done = None

    def end_flight(self) -> None:
        self._flight = set()
        self._flight_tenants = set()
        if self._flight_done is not None:
            self._flight_done.set()

    def in_flight(self, tenant: str) -> bool:
        """A delivery carrying `tenant`'s usage awaits the daemon's answer."""
        return tenant in self._flight_tenants

    def ambiguous(self, tenant: str, period_start: str, position: int | None) -> bool:
        """The replica moved past the flight's floor before its answer came: it may include it."""
        return (
            (tenant, period_start) in self._flight
            and position is not None
            and (self._flight_floor is None or position > self._flight_floor)
        )

    async def flight_answered(self, wait_s: float) -> bool:
        """Wait for the delivery in flight to be answered; False on timeout (then we over-count)."""
        if not self._flight:
            return True
        if self._flight_done is None:
            self._flight_done = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flight_done.wait(), wait_s)
        return not self._flight

    def add(self, key: Key, value: Amount) -> None:
        tenant, code, period_start = key
        self._changed(tenant, code)
        codes = self._totals.get((tenant, period_start))
        if codes is None:
            codes = self._totals[(tenant, period_start)] = {}
            self._periods.setdefault(tenant, set()).add(period_start)
        total = add(codes.get(code, 0), value)
        if total:
            codes[code] = total
        else:
            codes.pop(code, None)
            if not codes:
                del self._totals[(tenant, period_start)]
                periods = self._periods[tenant]
                periods.discard(period_start)
                if not periods:
                    del self._periods[tenant]

    def remove(self, key: Key, value: Amount) -> None:
        self.add(key, negate(value))

    def add_all(self, deltas: Iterable[tuple[Key, Amount]]) -> None:
        for key, value in deltas:
            self.add(key, value)

    def confirm(self, seq: int, deltas: Mapping[Key, Amount]) -> None:
        """The daemon counted these at or below `seq`: keep them until the replica gets there."""
        if deltas:
            heapq.heappush(self._confirmed, (seq, next(self._ties), dict(deltas)))

    def settle(self, position: int | None) -> int:
        """Drop what the replica at `position` already includes; returns the batches dropped."""
        dropped = 0
        while self._confirmed and position is not None and self._confirmed[0][0] <= position:
            _, _, deltas = heapq.heappop(self._confirmed)
            for key, value in deltas.items():
                self.remove(key, value)
            dropped += 1
        while self._gauge_seqs and position is not None and self._gauge_seqs[0][0] <= position:
            _, tenant, code, row = heapq.heappop(self._gauge_seqs)
            self.drop_gauge((tenant, code, ""), row)
        return dropped

    # -- gauges (`aggregation: latest`): a reading replaces, it does not add -------------------------

    def set_gauge(self, key: Key, at: float, value: Amount, row: int) -> None:
        tenant, code, _ = key
        codes = self._gauges.setdefault(tenant, {})
        current = codes.get(code)
        if current is not None and (current.at, current.row) > (at, row):
            return  # an older reading that arrived later: the newer one stays
        codes[code] = Gauge(at, value, row)
        self._changed(tenant, code)

    def confirm_gauge(self, key: Key, row: int, seq: int) -> None:
        """The daemon stored the reading of `row` at or below `seq`."""
        tenant, code, _ = key
        current = self._gauges.get(tenant, {}).get(code)
        if current is not None and current.row == row:
            current.seq = seq
            heapq.heappush(self._gauge_seqs, (seq, tenant, code, row))

    def drop_gauge(self, key: Key, row: int) -> None:
        """Forget the reading of `row` (the replica holds it, or the daemon refused it)."""
        tenant, code, _ = key
        codes = self._gauges.get(tenant)
        if codes is None or code not in codes or codes[code].row != row:
            return  # replaced by a newer reading meanwhile
        del codes[code]
        if not codes:
            del self._gauges[tenant]
        self._changed(tenant, code)

    def replace_gauges(self, readings: Iterable[tuple[Key, float, Amount, int]]) -> None:
        """The pending readings are exactly these (key, timestamp, value, row): for a reader of
        another process's outbox (tiergate/sidecar/local.py), which learns of no confirmations."""
        before = set(self._gauges)
        self._gauges, self._gauge_seqs = {}, []
        for key, at, value, row in readings:
            self.set_gauge(key, at, value, row)
        for tenant in before - set(self._gauges):
            self._changed(tenant, None)

    def _changed(self, tenant: str, code: str | None) -> None:
        for listener in self._listeners:
            listener(tenant, code)

    async def usage(self, replica: ReplicaReader, tenant: str, period_start: str) -> dict[str, Amount]:
        """The tenant's counters for the period as a decision must see them: the replica's, read at
        one position, plus what that position does not include yet (never less than was accepted)."""
        # The reader's counters always belong to its position (replica/index.py): no re-reads.
        if self.ambiguous(tenant, period_start, replica.meta.position):
            await self.flight_answered(FLIGHT_WAIT_S)  # else over-count, never under
        usage = replica.usage(tenant, period_start)
        return self.overlay(
            tenant, period_start, usage, replica.meta.position, lambda code: replica.gauge_as_of(tenant, code)
        )

    def overlay(
        self,
        tenant: str,
        period_start: str,
        usage: dict[str, Amount],
        position: int | None,
        held_as_of: Callable[[str], float | None] | None = None,
    ) -> dict[str, Amount]:
        """The replica's counters (read at `position`) plus what it does not include yet; a pending
        gauge reading replaces the replica's unless that one is newer (`held_as_of`: its time)."""
        if position is not None and (
            (self._confirmed and self._confirmed[0][0] <= position)
            or (self._gauge_seqs and self._gauge_seqs[0][0] <= position)
        ):
            self.settle(position)
        extra = self._totals.get((tenant, period_start))
        gauges = self._gauges.get(tenant)
        if not extra and not gauges:
            return usage
        merged = dict(usage)
        for code, value in (extra or {}).items():
            merged[code] = add(merged.get(code, 0), value)
        for code, gauge in (gauges or {}).items():
            held = held_as_of(code) if held_as_of is not None else None
            if held is None or held <= gauge.at:  # else: a newer reading reached the replica
                merged[code] = gauge.value
        return merged

    def total(self, tenant: str, code: str, period_start: str) -> Amount:
        return self._totals.get((tenant, period_start), {}).get(code, 0)

    def pending(self, tenant: str, period_start: str) -> Mapping[str, Amount]:
        """The tenant's pending totals of the period by code (empty: nothing pending); read-only."""
        return self._totals.get((tenant, period_start)) or _NOTHING

    def pending_in_all_periods(self, tenant: str) -> Mapping[str, Amount]:
        """The tenant's pending totals by code, summed over every period (and window) they count in:
        what a credit balance loses, which no period bounds (a hold keeps its creation's period, an
        event reported late keeps its own); read-only."""
        periods = self._periods.get(tenant)
        if not periods:
            return _NOTHING
        if len(periods) == 1:
            return self._totals[(tenant, next(iter(periods)))]
        merged: dict[str, Amount] = {}
        for period_start in periods:
            for code, value in self._totals[(tenant, period_start)].items():
                merged[code] = add(merged.get(code, 0), value)
        return merged

    def stats(self) -> dict[str, int]:
        counters = sum(len(c) for c in self._totals.values()) + sum(len(g) for g in self._gauges.values())
        return {"counters": counters, "awaiting_feed": len(self._confirmed) + len(self._gauge_seqs)}
