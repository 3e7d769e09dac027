"""Recording usage at the sidecar: validated events into the outbox, and check-and-reserve."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tiergate.catalog import Metric
from tiergate.errors import BadRequestError, ConflictError
from tiergate.models import Decision
from tiergate.periods import rfc3339
from tiergate.policy.engine import PolicyBundle
from tiergate.sidecar.decisions.policy_io import period_for, window_for
from tiergate.sidecar.decisions.service import DecisionService
from tiergate.sidecar.leases.holder import Leases
from tiergate.sidecar.replica.store import AccountRow, ReplicaReader
from tiergate.sidecar.usage.ledger import UsageLedger
from tiergate.sidecar.usage.outbox import Entry, Outbox, Reserved
from tiergate.usage_events import (
    GAUGE_PERIOD_START,
    MAX_EVENTS,
    EventError,
    SubscriptionResolver,
    ValidEvent,
    parse_event,
)

LOCK_STRIPES = 64


@dataclass(frozen=True, slots=True)
class Reservation:
    transaction_id: str
    reserved: bool
    replayed: bool


def reserved_body(decision: Decision, reservation: Reservation) -> dict[str, Any]:
    """The check-and-reserve response: the decision plus what was reserved."""
    return {**decision.body(), "reservation": reservation}


class UsageRecorder:
    """`record` for POST /v1/usage; `reserve` for POST /v1/check with `"reserve": true`."""

    # Told the outbox's backlog after each append (static mode warns with it as it grows).
    on_backlog: Callable[[int], None] | None = None

    def __init__(
        self,
        outbox: Outbox,
        ledger: UsageLedger,
        decisions: DecisionService,
        reader: ReplicaReader,
        bundle: Callable[[], PolicyBundle],
    ) -> None:
        self.outbox = outbox
        self.ledger = ledger
        self.decisions = decisions
        self.reader = reader
        self.bundle = bundle  # the live policy bundle and its catalog (hot-reloaded)
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        # Following a daemon: reserves of `enforcement: leased` metrics draw from its leases.
        self.leases: Leases | None = None

    async def record(self, raws: Sequence[object], where: str) -> list[dict[str, Any]]:
        """Validate all, then commit all (202 semantics); `where` names the field in errors."""
        now = datetime.fromtimestamp(self.decisions.clock(), UTC)
        metrics: Mapping[str, Any] = self.bundle().plans.get("metrics", {})
        resolve = self.reader.tenant_of_subscription
        events = [self._parse(raw, metrics, now, where.format(i), resolve) for i, raw in enumerate(raws)]
        rows: dict[str, AccountRow | None] = {}
        entries = [Entry(event, self._period(event, rows)) for event in events]
        await self.decisions.learn_usage_scope()
        inserted = await self.outbox.append(entries)
        self._appended()
        return [
            {
                "transaction_id": e.transaction_id,
                "external_customer_id": e.tenant,
                "code": e.code,
                "status": "accepted" if new else "duplicate",
            }
            for e, new in zip(events, inserted, strict=True)
        ]

    async def reserve(
        self, tenant: str, feature: str, quantity: int, transaction_id: str | None
    ) -> tuple[Decision, Reservation]:
        """Decide and, when allowed, count `quantity` before any other reserve of this tenant decides."""
        metrics = self.bundle().catalog.metrics
        metric = metrics.get(feature)
        if metric is None:
            raise BadRequestError(
                f"reserve: {feature!r} is not a metered feature (metrics: {sorted(metrics)})", field="feature"
            )
        if metric.aggregation == "latest":
            raise BadRequestError(
                f"reserve: {feature!r} is a gauge (aggregation latest): report the current value "
                "with POST /v1/usage, and check without reserve",
                field="feature",
            )
        counted = metric.aggregation != "sum"
        if counted and quantity > MAX_EVENTS:
            raise BadRequestError(
                f"reserve: quantity {quantity} of a count metric exceeds {MAX_EVENTS} (one event each)",
                field="quantity",
            )
        await self.decisions.learn_usage_scope()  # which answers the reservation changes
        tid = transaction_id or self._new_id()
        if transaction_id is not None:
            stored = await self.outbox.reservation(tenant, tid)
            if stored is not None:
                return await self._replayed(tenant, feature, quantity, tid, stored)
        async with self._locks[zlib.crc32(tenant.encode()) % LOCK_STRIPES]:
            decision = await self.decisions.decide(tenant, feature, quantity)
            if not decision.allow:
                return decision, Reservation(tid, False, False)
            leased = self.leases if metric.enforcement == "leased" else None
            if leased is not None and not await leased.take(tenant, feature, quantity):
                return dataclasses.replace(decision, allow=False, reason="quota_unavailable"), Reservation(
                    tid, False, False
                )
            entries = self._reservation_entries(tenant, feature, quantity, tid, counted, metric)
            if transaction_id is not None:  # the caller's own id: it may come back after pruning
                entries[0] = dataclasses.replace(entries[0], reserved_quantity=quantity)
            if leased is not None:  # their acknowledgements let the daemon free the units
                leased.spent_as(
                    tenant, feature, ((e.event.transaction_id, int(e.event.value)) for e in entries)
                )
            for entry in entries:  # counted now, under the lock: the next reserve sees it
                self.ledger.add(entry.key, entry.event.value)
        # Counting dropped the tenant's answers: the next reserve of the same kind finds it decided.
        self.decisions.rematerialise_soon([(tenant, feature, quantity)])
        inserted = await self.outbox.append(entries, reserved=True)
        self._appended()
        if not inserted[0]:  # the same id, reserved by a concurrent request that committed first
            stored = await self.outbox.reservation(tenant, tid)
            if stored is not None:
                return await self._replayed(tenant, feature, quantity, tid, stored)
        return decision, Reservation(tid, True, False)

    async def _replayed(
        self, tenant: str, feature: str, quantity: int, tid: str, stored: Reserved
    ) -> tuple[Decision, Reservation]:
        """A transaction id already reserved: the same request again gets the original outcome (it
        was allowed, and counted once); another feature or quantity under that id is a conflict."""
        if (stored.code, stored.quantity) != (feature, quantity):
            raise ConflictError(
                f"transaction_id {tid!r} already reserved {stored.quantity} of {stored.code!r}; "
                f"this request asks {quantity} of {feature!r} (use a new transaction_id)",
                field="transaction_id",
            )
        decision = await self.decisions.decide(tenant, feature, quantity)
        return dataclasses.replace(decision, allow=True, reason="ok"), Reservation(tid, True, True)

    def _new_id(self) -> str:
        """A transaction id for a reservation sent without one: this process's random 64-bit
        prefix and a counter (unique like a uuid4, at a fraction of its cost)."""
        return f"{self._id_prefix}-{next(self._ids)}"

    def _appended(self) -> None:
        if self.on_backlog is not None:
            self.on_backlog(self.outbox.backlog)

    def _reservation_entries(
        self, tenant: str, code: str, quantity: int, tid: str, counted: bool, metric: Metric
    ) -> list[Entry]:
        at = datetime.fromtimestamp(self.decisions.clock(), UTC)
        window = window_for(self.bundle().catalog, code, at)
        period_start = (window or period_for(self.reader.account(tenant), at, rfc3339(at) or ""))[0]
        if not counted:
            props = {str(metric.field): quantity}
            return [Entry(ValidEvent(tenant, tid, code, at, quantity, props), period_start)]
        # A count metric counts events: N units are N events, the first with the caller's id.
        ids = [tid, *(f"{tid}/{n}" for n in range(2, quantity + 1))]
        return [Entry(ValidEvent(tenant, i, code, at, 1, {}), period_start) for i in ids]

    def _period(self, event: ValidEvent, rows: dict[str, AccountRow | None]) -> str:
        if event.gauge:
            return GAUGE_PERIOD_START  # never reset: read beside every period
        window = window_for(self.bundle().catalog, event.code, event.at)
        if window is not None:
            return window[0]
        if event.tenant not in rows:
            rows[event.tenant] = self.reader.account(event.tenant)
        return period_for(rows[event.tenant], event.at, rfc3339(event.at) or "")[0]

    @staticmethod
    def _parse(
        raw: object, metrics: Mapping[str, Any], now: datetime, where: str, resolve: SubscriptionResolver
    ) -> ValidEvent:
        try:
            return parse_event(raw, metrics, now, resolve)
        except EventError as exc:
            field = f"{where}.{exc.field}"
            raise BadRequestError(f"{field}: {exc.message}", field=field) from None
