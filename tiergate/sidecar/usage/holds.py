"""Holds: a quantity of a metered feature reserved now, settled (or released) later.

A hold counts against the limit from its creation: its quantity is pending usage in the
`UsageLedger` (every decision, and every cached answer, sees it at once) until it is settled (its
usage events take its place in one outbox transaction, counted in the same loop step), released,
or expires. Holds live in the outbox file (table `holds`, tiergate/sidecar/usage/outbox.py), so
they survive a restart and kill -9: the active ones are counted again when the outbox opens.
`held(tenant, code)` is what the active holds take from a tenant's allowance; a credit check sees
it through the same pending usage. A hold of an `enforcement: leased` metric also draws its units
from the sidecar's quota lease under the tenant's lock, as a reserve does (docs/adr/0045). See
docs/adr/0044-holds-in-the-outbox.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import secrets
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from tiergate.errors import ConflictError, NotFoundError, OutboxError, OverageRejectedError
from tiergate.models import Decision
from tiergate.sidecar.leases.holder import Drawn
from tiergate.sidecar.usage.hold_store import (
    EXPIRED,
    HELD,
    RELEASED,
    SETTLED,
    Hold,
    end_holds,
    insert_hold,
    load_active,
    load_one,
    rfc3339_of,
    set_expiry,
    settle_rows,
)
from tiergate.sidecar.usage.outbox import Entry, Outbox
from tiergate.sidecar.usage.recorder import UsageRecorder, reservable_metric, usage_entries

log = structlog.get_logger("tiergate.holds")

Overage = Literal["reject", "cap", "allow"]
DEFAULT_TTL_S = 300
MAX_TTL_S = 86_400
PRUNE_EVERY_S = 60.0  # how often ended holds past their retention are forgotten
IDLE_SWEEP_S = 60.0  # the sweeper's longest sleep with no hold due sooner


def settle_quantity(held: int, asked: int, overage: Overage) -> int | None:
    """What a settle records: what it asks, within the hold; beyond it `cap` records the hold,
    `allow` what was asked, and `reject` None (the excess must fit the limit: the caller decides)."""
    if asked <= held or overage == "allow":
        return asked
    return held if overage == "cap" else None


def is_replayed_settle(hold: Hold, asked: int) -> bool:
    """A settle of a settled hold repeats the one that settled it (the same quantity asked, or what
    that one recorded)."""
    return hold.state == SETTLED and asked in (hold.settle_requested, hold.settled_quantity)


class Holds:
    """The sidecar's holds: create, settle, extend, release, and a sweeper that expires them."""

    def __init__(self, outbox: Outbox, recorder: UsageRecorder, *, retention_s: float = 7 * 86400.0) -> None:
        self.outbox = outbox
        self.recorder = recorder
        self.ledger = recorder.ledger
        self.decisions = recorder.decisions
        self.clock: Callable[[], float] = recorder.decisions.clock
        self.retention_s = retention_s  # ended holds are remembered this long (replays)
        self._active: dict[str, Hold] = {}
        self._by_tid: dict[tuple[str, str], Hold] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._drawn: dict[str, list[Drawn]] = {}  # hold_id -> what it took from quota leases
        self._expiries: list[tuple[float, str]] = []  # (expires_at, hold_id); stale entries skipped
        self._wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self.ended = {SETTLED: 0, RELEASED: 0, EXPIRED: 0}
        self.created = 0
        self.sweep_failures = 0

    # -- the pending-usage view -------------------------------------------------------------

    def held(self, tenant: str, code: str) -> int:
        """The quantity of `code` that `tenant`'s active holds take from its allowance."""
        return self._held.get((tenant, code), 0)

    @property
    def active(self) -> int:
        return len(self._active)

    def status(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "created": self.created,
            **self.ended,
            "sweep_failures": self.sweep_failures,
        }

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Count the active holds again (call after `Outbox.open`), and start the sweeper."""
        for hold in await self.outbox.read(load_active):
            self._count(hold)
        log.info("holds_opened", active=len(self._active))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="holds-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait({self._sweeper})  # a cancellation of close() itself still propagates

    # -- the operations -----------------------------------------------------------------------

    async def create(
        self, tenant: str, feature: str, quantity: int, ttl_s: int, transaction_id: str | None
    ) -> tuple[Decision, Hold | None, bool]:
        """Decide and, when allowed, hold `quantity`; (decision, hold or None, replayed). One
        commit: it also finds an earlier hold under the caller's id (then that one is answered)."""
        metric = reservable_metric(self.recorder.bundle(), feature, quantity, "hold")
        await self.decisions.learn_usage_scope()
        tid = transaction_id or secrets.token_hex(16)
        async with self.recorder.lock(tenant):
            earlier = self._by_tid.get((tenant, tid))
            if earlier is None:
                decision = await self.decisions.decide(tenant, feature, quantity)
                if not decision.allow and transaction_id is not None:
                    earlier = await self._stored(tenant, tid)  # an ended hold's retry is not denied
                if not decision.allow and earlier is None:
                    return decision, None, False
            if earlier is None:
                drawn = await self._draw(tenant, feature, quantity, leased=metric.enforcement == "leased")
                if drawn is None:
                    return dataclasses.replace(decision, allow=False, reason="quota_unavailable"), None, False
                hold = self._new_hold(tenant, feature, quantity, ttl_s, tid)
                self._count(hold)  # under the lock: the next decision sees it
                self._drawn[hold.hold_id] = drawn
        if earlier is not None:
            return await self._replayed_create(earlier, feature, quantity)
        self.decisions.rematerialise_soon([(tenant, feature, quantity)])
        committed = await self._commit_new(hold, named=transaction_id is not None)
        if committed is not hold:
            return await self._replayed_create(committed, feature, quantity)
        return decision, hold, False

    async def settle(self, hold_id: str, quantity: int, overage: Overage) -> tuple[Hold, bool]:
        """Record the hold's real usage (its transaction id); (hold, replayed)."""
        hold = await self.find(hold_id)
        async with self.recorder.lock(hold.tenant):
            await self._expire_if_due(hold)
            if hold.state != HELD:
                if is_replayed_settle(hold, quantity):
                    return hold, True
                raise self._not_held(hold, f"settle {quantity}")
            recorded = await self._recorded(hold, quantity, overage)  # may draw the excess from a lease
            now = self.clock()
            entries = self._settle_entries(hold, recorded, now)
            ended = dataclasses.replace(
                hold, state=SETTLED, settle_requested=quantity, settled_quantity=recorded, ended_at=now
            )
            ids = await self._write(lambda conn: settle_rows(conn, ended, entries, now), "settle")
            self._end(hold, ended, entries)  # the hold leaves the ledger and its events enter it, one step
            self.outbox.accepted(entries, ids)
        return hold, False

    async def extend(self, hold_id: str, ttl_s: int) -> Hold:
        hold = await self.find(hold_id)
        async with self.recorder.lock(hold.tenant):
            await self._expire_if_due(hold)
            if hold.state != HELD:
                raise self._not_held(hold, "extend")
            expires_at = self.clock() + ttl_s
            await self._write(lambda conn: set_expiry(conn, hold.hold_id, expires_at), "extend")
            hold.expires_at = expires_at
            heapq.heappush(self._expiries, (expires_at, hold.hold_id))
        self._wake.set()
        return hold

    async def release(self, hold_id: str) -> tuple[Hold, bool]:
        """Give the hold back (nothing is recorded); (hold, replayed)."""
        hold = await self.find(hold_id)
        async with self.recorder.lock(hold.tenant):
            await self._expire_if_due(hold)
            if hold.state in (RELEASED, EXPIRED):
                return hold, True
            if hold.state == SETTLED:
                raise self._not_held(hold, "release")
            ended = dataclasses.replace(hold, state=RELEASED, ended_at=self.clock())
            await self._write(lambda conn: end_holds(conn, [ended]), "release")
            self._end(hold, ended)
        return hold, False

    # -- steps --------------------------------------------------------------------------------

    def _new_hold(self, tenant: str, feature: str, quantity: int, ttl_s: int, tid: str) -> Hold:
        now = self.clock()
        period_start = self.recorder.period_of(tenant, feature, datetime.fromtimestamp(now, UTC))
        committed: asyncio.Future[Hold] = asyncio.get_running_loop().create_future()
        return Hold(
            "h_" + secrets.token_hex(12), tenant, tid, feature, period_start, quantity, now, now + ttl_s,
            committed=committed,
        )  # fmt: skip

    async def _commit_new(self, hold: Hold, *, named: bool) -> Hold:
        """Commit a counted hold; the hold that holds its id (an earlier one, when `named` and the
        outbox has one: this one is then uncounted, never written)."""
        assert hold.committed is not None
        try:
            earlier = await self.outbox.transact(lambda conn: insert_hold(conn, hold, named))
        except Exception as exc:
            self._uncount(hold)
            error = exc if isinstance(exc, ConflictError) else OutboxError(
                f"usage outbox {self.outbox.path} could not commit a hold: {exc}"
            )  # fmt: skip
            hold.committed.set_exception(error)
            hold.committed.exception()  # retrieved: replays waiting on it get it too
            raise error from exc
        if earlier is not None:
            self._uncount(hold)
            hold.committed.set_result(earlier)
            return earlier
        hold.committed.set_result(hold)
        self.created += 1
        self._wake.set()
        log.debug(  # one per hold: debug, like the decisions' own lines are sampled
            "hold_created", hold_id=hold.hold_id, tenant=hold.tenant, feature=hold.code, held=hold.quantity
        )
        return hold

    async def _stored(self, tenant: str, tid: str) -> Hold | None:
        return await self.outbox.read(
            lambda conn: load_one(conn, "tenant = ? AND transaction_id = ?", (tenant, tid))
        )

    async def _replayed_create(
        self, hold: Hold, feature: str, quantity: int
    ) -> tuple[Decision, Hold | None, bool]:
        """The same transaction id again: the same hold (whatever became of it), or a conflict."""
        if hold.committed is not None and not hold.committed.done():
            hold = await asyncio.shield(hold.committed)  # the one the first request's commit found
        if (hold.code, hold.quantity) != (feature, quantity):
            raise ConflictError(
                f"transaction_id {hold.transaction_id!r} already holds {hold.quantity} of {hold.code!r}; "
                f"this request asks {quantity} of {feature!r} (use a new transaction_id)",
                field="transaction_id",
            )
        decision = await self.decisions.decide(hold.tenant, feature, quantity)
        return dataclasses.replace(decision, allow=True, reason="ok"), hold, True

    async def _recorded(self, hold: Hold, quantity: int, overage: Overage) -> int:
        """The quantity this settle records; `reject` beyond the hold decides the excess (the hold
        itself still counted, so the excess must fit beside it)."""
        if quantity:
            reservable_metric(self.recorder.bundle(), hold.code, quantity, "settle")
        recorded = settle_quantity(hold.quantity, quantity, overage)
        if recorded is not None:
            return recorded
        excess = quantity - hold.quantity
        decision = await self.decisions.decide(hold.tenant, hold.code, excess)
        leased = self.recorder.bundle().catalog.metrics[hold.code].enforcement == "leased"
        drawn = await self._draw(hold.tenant, hold.code, excess, leased=leased) if decision.allow else None
        if drawn is None:
            reason = decision.reason if not decision.allow else "quota_unavailable"
            raise OverageRejectedError(
                f"settle {quantity} of hold {hold.hold_id!r} (holding {hold.quantity}): the excess "
                f"{excess} is refused ({reason}, limit {decision.limit}, used {decision.used}); "
                'settle again with "overage": "cap" to record the held quantity, or "allow"',
                field="quantity",
            )
        self._drawn.setdefault(hold.hold_id, []).extend(drawn)
        return quantity

    async def _draw(self, tenant: str, code: str, quantity: int, *, leased: bool) -> list[Drawn] | None:
        """Under the tenant's lock: what a leased metric's hold takes from the lease (None: the lease
        cannot give it, `quota_unavailable`); nothing to take for another metric."""
        leases = self.recorder.leases
        if not leased or leases is None:
            return []
        drawn = await leases.draw(tenant, code, quantity)
        return None if drawn is None else [drawn]

    def _settle_entries(self, hold: Hold, recorded: int, now: float) -> list[Entry]:
        if not recorded:
            return []
        metric = self.recorder.bundle().catalog.metrics[hold.code]
        at = datetime.fromtimestamp(now, UTC)
        period_start = self.recorder.period_of(hold.tenant, hold.code, at)
        return usage_entries(hold.tenant, hold.code, recorded, hold.transaction_id, metric, at, period_start)

    async def _write(self, fn: Callable[[sqlite3.Connection], Any], what: str) -> Any:
        try:
            return await self.outbox.transact(fn)
        except (ConflictError, NotFoundError):
            raise
        except Exception as exc:
            log.error("hold_write_failed", operation=what, error=str(exc))
            raise OutboxError(f"usage outbox {self.outbox.path} could not {what} a hold: {exc}") from exc

    async def find(self, hold_id: str) -> Hold:
        hold = self._active.get(hold_id)
        if hold is None:
            hold = await self.outbox.read(lambda conn: load_one(conn, "hold_id = ?", (hold_id,)))
        elif hold.committed is not None and not hold.committed.done():
            await asyncio.shield(hold.committed)  # still being created: act on it once it is durable
            hold = self._active.get(hold_id)
        if hold is None:
            raise NotFoundError(f"no hold {hold_id!r} in this sidecar (ended holds are kept "
                                f"{self.retention_s:.0f} s)", field="hold_id")  # fmt: skip
        return hold

    def _not_held(self, hold: Hold, what: str) -> ConflictError:
        when = rfc3339_of(hold.ended_at) if hold.ended_at is not None else "?"
        return ConflictError(
            f"cannot {what}: hold {hold.hold_id!r} was {hold.state} at {when}"
            + (f" (recorded {hold.settled_quantity})" if hold.state == SETTLED else ""),
            field="hold_id",
        )

    # -- the in-memory count -------------------------------------------------------------------

    def _count(self, hold: Hold) -> None:
        self._active[hold.hold_id] = hold
        self._by_tid[(hold.tenant, hold.transaction_id)] = hold
        held_key = (hold.tenant, hold.code)
        self._held[held_key] = self._held.get(held_key, 0) + hold.quantity
        heapq.heappush(self._expiries, (hold.expires_at, hold.hold_id))
        self.ledger.add(hold.key, hold.quantity)

    def _uncount(self, hold: Hold, entries: list[Entry] | None = None) -> None:
        """The hold stops counting; what it drew from a lease goes to `entries` (its settled usage)
        and the rest back to the lease."""
        if self._active.pop(hold.hold_id, None) is None:
            return
        drawn = self._drawn.pop(hold.hold_id, None)
        if drawn and self.recorder.leases is not None:
            events = ((e.event.transaction_id, int(e.event.value)) for e in entries or ())
            self.recorder.leases.assign(hold.tenant, drawn, events)
        self._by_tid.pop((hold.tenant, hold.transaction_id), None)
        held_key = (hold.tenant, hold.code)
        left = self._held.get(held_key, 0) - hold.quantity
        if left > 0:
            self._held[held_key] = left
        else:
            self._held.pop(held_key, None)
        self.ledger.remove(hold.key, hold.quantity)

    def _end(self, hold: Hold, ended: Hold, entries: list[Entry] | None = None) -> None:
        """A committed end: the hold object takes its final state and stops counting (`entries`:
        the usage a settle recorded in its place)."""
        self._uncount(hold, entries)
        hold.state, hold.ended_at = ended.state, ended.ended_at
        hold.settle_requested, hold.settled_quantity = ended.settle_requested, ended.settled_quantity
        self.ended[hold.state] += 1
        # An expiry is worth an operator's look (work that never settled); the others are routine.
        log.log(logging.INFO if hold.state == EXPIRED else logging.DEBUG, f"hold_{hold.state}",
                hold_id=hold.hold_id, tenant=hold.tenant, feature=hold.code, held=hold.quantity,
                recorded=hold.settled_quantity)  # fmt: skip

    # -- expiry --------------------------------------------------------------------------------

    async def _expire_if_due(self, hold: Hold) -> None:
        """Under the tenant's lock: a hold past its expiry is expired for every caller, swept or not."""
        if hold.state == HELD and hold.expires_at <= self.clock() and hold.hold_id in self._active:
            ended = dataclasses.replace(hold, state=EXPIRED, ended_at=self.clock())
            await self._write(lambda conn: end_holds(conn, [ended]), "expire")
            self._end(hold, ended)

    async def expire_due(self) -> int:
        """Expire every hold past its expiry; returns how many."""
        now = self.clock()
        due: list[Hold] = []
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, hold_id = heapq.heappop(self._expiries)
            hold = self._active.get(hold_id)
            if hold is not None and hold.expires_at == expires_at:
                due.append(hold)
        for n, hold in enumerate(due):
            try:
                async with self.recorder.lock(hold.tenant):
                    await self._expire_if_due(hold)
            except OutboxError:
                for later in due[n:]:  # the next sweep tries these again
                    heapq.heappush(self._expiries, (later.expires_at, later.hold_id))
                raise
        return len(due)

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            delay = self._expiries[0][0] - self.clock() if self._expiries else IDLE_SWEEP_S
            if delay > 0:
                # Not asyncio.wait_for: on 3.11 it swallows a cancellation that meets a wake-up,
                # and the sidecar's shutdown would wait on this task forever.
                timer = loop.call_later(min(delay, IDLE_SWEEP_S), self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
            try:
                await self.expire_due()
                await self._prune_if_due()
            except Exception as exc:  # visible (status, log); the next sweep tries again
                self.sweep_failures += 1
                log.error("holds_sweep_failed", error=str(exc))
                await asyncio.sleep(1.0)

    async def _prune_if_due(self) -> None:
        now = self.clock()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        cutoff = now - self.retention_s
        await self.outbox.transact(
            lambda conn: conn.execute("DELETE FROM holds WHERE state != 'held' AND ended_at < ?", (cutoff,))
        )
