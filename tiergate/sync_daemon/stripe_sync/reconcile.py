"""Reconciliation: list every Stripe subscription, diff with the mirror (pure), repair what differs.

Webhooks can be lost, arrive late or tie; this job makes the mirror converge anyway. It reads
Stripe with async calls and writes through the mirror's single writer in short transactions,
so webhook intake is never blocked behind it. A repair is only committed when the row is still
exactly what the diff saw: a webhook that landed in between wins, and the next run re-checks.
A repair enqueues the same outbound events a webhook would (cause `{"source": "reconcile"}`),
in the repair's own transaction: once per change, since the next run finds nothing to repair.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from tiergate.errors import BillingUnavailableError, InvalidTenantError
from tiergate.models import ENDED_STATUSES
from tiergate.periods import utc_now_text
from tiergate.policy.document import POLICY_ACCOUNT_FIELDS
from tiergate.sync_daemon.mirror.store import Cause, CustomerLink, MirrorAccount, MirrorTxn
from tiergate.sync_daemon.stripe_sync.parts import SyncParts
from tiergate.sync_daemon.stripe_sync.translate import SubscriptionState, decide_subscription

log = structlog.get_logger("tiergate.reconcile")

# Every field the policy reads (add-ons included), and the rest of what Stripe lists.
COMPARED = (
    *POLICY_ACCOUNT_FIELDS,
    "subscription_id",
    "stripe_customer_id",
    "interval",
    "canceled_at",
    "unmapped_price",
)
_DUNNING = frozenset({"past_due", "unpaid"})
_IN_GOOD_STANDING = frozenset({"active", "trialing"})
_BATCH = 500


@dataclass(frozen=True)
class Repair:
    tenant: str
    before: MirrorAccount | None  # the row the diff saw; the repair applies only if still so
    after: MirrorAccount
    differences: dict[str, tuple[Any, Any]]
    state: SubscriptionState | None = None  # what Stripe listed (None: the subscription vanished)
    as_of: int = 0


def diff_subscriptions(
    mirror_accounts: Sequence[MirrorAccount], stripe_subscriptions: Sequence[SubscriptionState], *, as_of: int
) -> list[Repair]:
    """Repairs that make the mirror say what Stripe says (states must carry their tenant).

    A tenant with several subscriptions is judged by its live one (not canceled or expired),
    else the one the mirror already follows. An account whose subscription Stripe no longer
    lists at all is marked canceled.
    """
    current = {account.tenant: account for account in mirror_accounts}
    chosen = _choose(stripe_subscriptions, current)
    repairs = [r for tenant, state in chosen.items() if (r := _repair(current.get(tenant), state, as_of))]
    listed = {state.subscription_id for state in stripe_subscriptions}
    for account in mirror_accounts:
        vanished = account.subscription_id is not None and account.subscription_id not in listed
        if account.tenant not in chosen and vanished and account.status not in ENDED_STATUSES:
            after = account.replace(status="canceled", needs_reconcile=False)
            repairs.append(Repair(account.tenant, account, after, {"status": (account.status, "canceled")}))
    return repairs


def _choose(
    states: Sequence[SubscriptionState], current: Mapping[str, MirrorAccount]
) -> dict[str, SubscriptionState]:
    chosen: dict[str, SubscriptionState] = {}
    for state in states:
        assert state.tenant is not None, "resolve tenants before diffing"
        held = chosen.get(state.tenant)
        if held is None or _rank(state, current.get(state.tenant)) > _rank(held, current.get(state.tenant)):
            chosen[state.tenant] = state
    return chosen


def _rank(state: SubscriptionState, account: MirrorAccount | None) -> tuple[bool, bool, float]:
    followed = account is not None and account.subscription_id == state.subscription_id
    start = state.current_period_start.timestamp() if state.current_period_start else 0.0
    return state.status not in ENDED_STATUSES, followed, start


def _repair(current: MirrorAccount | None, state: SubscriptionState, as_of: int) -> Repair | None:
    """None when the mirror already agrees, or holds a webhook newer than the listing (it wins)."""
    assert state.tenant is not None
    after, _ = decide_subscription(current, state, state.tenant, as_of, fetched=True)
    if after is None:
        return None
    after = _settle_dunning(after, state)
    before = dataclasses.asdict(current) if current else {}
    differences = {
        name: (before.get(name), getattr(after, name))
        for name in COMPARED
        if before.get(name) != getattr(after, name)
    }
    if not differences and not (current and current.needs_reconcile):
        return None
    return Repair(state.tenant, current, after, differences, state, as_of)


def _settle_dunning(account: MirrorAccount, state: SubscriptionState) -> MirrorAccount:
    """Keep past_due_since consistent with the status when invoice webhooks were missed."""
    if state.status in _DUNNING and account.past_due_since is None:
        # The failed renewal was at the start of the current period: the best date a list gives.
        return account.replace(past_due_since=state.current_period_start or datetime.now(UTC))
    if state.status in _IN_GOOD_STANDING and account.past_due_since is not None:
        return account.replace(past_due_since=None, payment_attempts=0)
    return account


# -- the job --------------------------------------------------------------------------------


@dataclass
class ReconcileSummary:
    started_at: str
    finished_at: str | None = None
    ok: bool = False
    subscriptions: int = 0
    no_tenant: int = 0
    repairs: int = 0
    raced: int = 0
    emails: int = 0  # customers' emails the listing changed (they are not account fields: no drift)
    drift: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class MirrorLag:
    """How far the mirror may be behind Stripe, as this daemon knows it (monotonic seconds).

    0 while the latest reconcile succeeded, or before any has run: webhooks keep the mirror
    current. Once one fails (Stripe's API away), the time since the last success, or since the
    first failed attempt began when none succeeded in this process. A duration, so the hosts'
    clocks never enter into it; the feed sends it to sidecars as `mirror_lag_s`.
    """

    clock: Callable[[], float] = time.monotonic
    last_ok_at: float | None = None
    failing_since: float | None = None

    def observe(self, ok: bool, started_at: float) -> None:
        if ok:
            self.last_ok_at, self.failing_since = self.clock(), None
        elif self.failing_since is None:
            self.failing_since = started_at

    def seconds(self) -> float:
        if self.failing_since is None:
            return 0.0
        since = self.last_ok_at if self.last_ok_at is not None else self.failing_since
        return max(0.0, self.clock() - since)


@dataclass
class Reconciler(SyncParts):
    last: ReconcileSummary | None = field(default=None, init=False)
    lag: MirrorLag = field(default_factory=MirrorLag, init=False)

    async def run(self, progress: Callable[[int], None] | None = None) -> ReconcileSummary:
        summary = ReconcileSummary(started_at=utc_now_text())
        started_at = self.lag.clock()
        as_of = int(time.time())
        try:
            states = await self._list(summary, progress)
            repairs = diff_subscriptions(await self.mirror.accounts(), states, as_of=as_of)
            await self._apply(repairs, summary)
            summary.emails = await self._note_emails(states, as_of)
            summary.ok = True
        except BillingUnavailableError as exc:
            summary.error = exc.message
            log.warning("reconcile_failed", error=exc.message)
        summary.finished_at = utc_now_text()
        self.metrics.reconciles.labels("ok" if summary.ok else "failed").inc()
        self.last = summary
        self.lag.observe(summary.ok, started_at)
        log.info(
            "reconcile", **{k: v for k, v in summary.as_dict().items() if k != "drift"}, drift=summary.drift
        )
        return summary

    async def _list(
        self, summary: ReconcileSummary, progress: Callable[[int], None] | None
    ) -> list[SubscriptionState]:
        customers = await self.mirror.customers()
        states = []
        async for raw in self.billing.list_subscriptions():
            summary.subscriptions += 1
            if progress is not None:
                progress(1)
            try:
                state = self.translator.subscription(raw)
            except InvalidTenantError as exc:
                log.warning(
                    "invalid_tenant", subscription_id=raw.get("id"), field=exc.field, reason=exc.message
                )
                summary.no_tenant += 1
                continue
            tenant = state.tenant or customers.get(state.customer_id or "")
            if tenant is None:
                summary.no_tenant += 1
                continue
            states.append(dataclasses.replace(state, tenant=tenant))
        return states

    async def _apply(self, repairs: list[Repair], summary: ReconcileSummary) -> None:
        drift: Counter[str] = Counter()
        announce = functools.partial(self._announce, run=summary.started_at)
        for start in range(0, len(repairs), _BATCH):
            batch = repairs[start : start + _BATCH]
            applied = await self.mirror.transact(
                functools.partial(_apply_batch, batch=batch, announce=announce, run=summary.started_at)
            )
            for repair in applied:
                if repair is None:
                    summary.raced += 1
                    continue
                summary.repairs += 1
                for name in repair.differences:
                    drift[name] += 1
                    self.metrics.drift.labels(name).inc()
                if repair.differences:
                    log.info("mirror_drift", tenant=repair.tenant, differences=_printable(repair.differences))
            await asyncio.sleep(0)  # let webhook intake in between batches
        summary.drift = dict(drift)

    async def _note_emails(self, states: Sequence[SubscriptionState], as_of: int) -> int:
        """Keep the listed customers' emails where they differ from the mirror's (read after the
        repairs, which link new customers); a newer webhook's address wins (`as_of`)."""
        changes = list(email_changes(states, await self.mirror.customer_emails()).items())
        noted = 0
        for start in range(0, len(changes), _BATCH):
            batch = changes[start : start + _BATCH]
            noted += await self.mirror.transact(functools.partial(_note_batch, batch=batch, as_of=as_of))
            await asyncio.sleep(0)
        return noted

    def _announce(
        self, txn: MirrorTxn, before: MirrorAccount | None, after: MirrorAccount, repair: Repair, run: str
    ) -> None:
        """The outbound events of a repair, in its transaction (nothing without endpoints)."""
        if self.outbound is not None:
            self.outbound.account_changed(txn, before, after, repair_cause(repair, run))


def repair_cause(repair: Repair, run: str) -> dict[str, Any]:
    """What an outbound event names as its cause when reconciliation made the change."""
    return {
        "source": "reconcile",
        "reconcile_started_at": run,
        "subscription": repair.after.subscription_id,
        "repaired": sorted(repair.differences),
    }


Announce = Callable[[MirrorTxn, MirrorAccount | None, MirrorAccount, Repair], None]


def _apply_batch(txn: MirrorTxn, batch: list[Repair], announce: Announce, run: str) -> list[Repair | None]:
    """Apply each repair to the row as it is now: a webhook may have landed since the diff."""
    done: list[Repair | None] = []
    txn.cause = Cause("reconcile", event_at=run)
    for planned in batch:
        current = txn.account(planned.tenant)
        repair: Repair | None = planned
        if current != planned.before:
            repair = _repair(current, planned.state, planned.as_of) if planned.state else None
        if repair is None:
            done.append(None)
            continue
        announce(txn, current, txn.put_account(repair.after), repair)
        customer = repair.after.stripe_customer_id
        if customer and txn.customer(customer) is None:
            txn.link_customer(CustomerLink(customer, repair.tenant))
        done.append(repair)
    return done


def email_changes(
    states: Sequence[SubscriptionState], known: Mapping[str, str | None]
) -> dict[str, str | None]:
    """Customer id -> email for the linked customers whose listed email differs from `known`'s."""
    changes: dict[str, str | None] = {}
    for state in states:
        customer, email = state.customer_id, state.email
        if (
            customer is not None
            and customer in known
            and email is not None
            and known[customer] != email.address
        ):
            changes[customer] = email.address
    return changes


def _note_batch(txn: MirrorTxn, batch: list[tuple[str, str | None]], as_of: int) -> int:
    return sum(txn.note_customer_email(customer, email, as_of) for customer, email in batch)


def _printable(differences: dict[str, tuple[Any, Any]]) -> dict[str, list[str]]:
    return {name: [str(old), str(new)] for name, (old, new) in differences.items()}
