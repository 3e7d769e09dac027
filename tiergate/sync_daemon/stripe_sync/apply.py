"""Applies one verified Stripe event to the mirror: resolve the tenant, settle ordering, commit.

The decisions themselves are pure (translate.py); this module does the I/O around them: reads
the mirror, re-fetches from Stripe on a same-second tie, and commits the result together with
the event id in one transaction, so a replay or a concurrent duplicate changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from tiergate.errors import BillingUnavailableError
from tiergate.sync_daemon.mirror.store import Cause, CustomerLink, MirrorAccount, MirrorTxn
from tiergate.sync_daemon.stripe_sync.parts import SyncParts
from tiergate.sync_daemon.stripe_sync.translate import (
    CheckoutCompleted,
    CustomerSeen,
    Ignored,
    PaymentOutcome,
    SubscriptionState,
    decide_payment,
    decide_subscription,
)

log = structlog.get_logger("tiergate.webhook")


class _TieAfterLookup(Exception):
    """The account reached this event's second only after the lookup: roll back, fetch, apply."""


@dataclass(frozen=True)
class EventMeta:
    id: str
    type: str
    created: int

    def cause(self) -> Cause:
        return Cause.stripe_event(self.id, self.type, self.created)


def _tenant_in(txn: MirrorTxn, tenant: str | None, customer_id: str | None) -> str | None:
    if tenant is not None or customer_id is None:
        return tenant
    link = txn.customer(customer_id)
    return link.tenant if link else None


@dataclass
class EventApplier(SyncParts):
    refetch: bool = field(
        kw_only=True
    )  # ask Stripe on a same-second tie and for an unlinked customer's tenant

    async def handle(self, event: dict[str, Any]) -> str:
        meta = _meta(event)
        intent = self.translator.event(event)
        if isinstance(intent, SubscriptionState):
            return await self._subscription(meta, intent)
        if isinstance(intent, CustomerSeen):
            return await self._record(meta, lambda txn: self._customer(txn, meta, intent))
        if isinstance(intent, PaymentOutcome):
            return await self._record(meta, lambda txn: self._payment(txn, meta, intent))
        if isinstance(intent, CheckoutCompleted):
            return await self._checkout(meta, intent)
        assert isinstance(intent, Ignored)
        return await self._record(meta, lambda txn: "ignored")

    async def record(self, event: dict[str, Any], outcome: str) -> str:
        """Remember `event` as seen with `outcome`, changing nothing else (a seen id: `duplicate`)."""
        return await self._record(_meta(event), lambda txn: outcome)

    async def _record(self, meta: EventMeta, step: Callable[[MirrorTxn], str]) -> str:
        """Run `step` and remember the event id in the same transaction; a seen id is a no-op."""

        def run(txn: MirrorTxn) -> str:
            if txn.seen(meta.id):
                return "duplicate"
            txn.cause = meta.cause()
            outcome = step(txn)
            txn.record_event(meta.id, meta.type, outcome)
            return outcome

        return await self.mirror.transact(run)

    # -- subscriptions -------------------------------------------------------------------

    async def _subscription(self, meta: EventMeta, state: SubscriptionState) -> str:
        done = await self.mirror.transact(lambda txn: self._subscription_at_once(txn, meta, state))
        if done is None:  # Stripe must be asked first, outside any transaction
            return await self._subscription_asking_stripe(meta, state)
        outcome, tenant = done
        return self._subscription_done(meta, state, tenant, outcome)

    def _subscription_at_once(
        self, txn: MirrorTxn, meta: EventMeta, state: SubscriptionState
    ) -> tuple[str, str | None] | None:
        """The event in one transaction, or None (nothing written) when Stripe must be asked first:
        for an unlinked customer's tenant, or on a same-second tie (with `refetch`)."""
        if txn.seen(meta.id, customer_id=state.customer_id):
            return "duplicate", None
        txn.cause = meta.cause()
        tenant = _tenant_in(txn, state.tenant, state.customer_id)
        if tenant is None:
            if self.refetch and state.customer_id is not None:
                return None
            outcome = "no_tenant"
        else:
            if self._tie(meta, txn.account(tenant)):
                return None
            outcome = self._put_subscription(txn, meta, tenant, state, False)
        txn.record_event(meta.id, meta.type, outcome)
        return outcome, tenant

    async def _subscription_asking_stripe(self, meta: EventMeta, state: SubscriptionState) -> str:
        seen, tenant, current = await self.mirror.transact(
            lambda txn: _lookup(txn, meta.id, state.tenant, state.customer_id)
        )
        if seen:
            return "duplicate"
        if tenant is None:
            tenant = await self._tenant_from_stripe(state.customer_id)
        if tenant is None:
            return self._subscription_done(
                meta, state, None, await self._record(meta, lambda txn: "no_tenant")
            )
        fetched = False
        asked = self._tie(meta, current)
        if asked:
            state, fetched = await self._fresh(state)
        settle = self.refetch and not fetched and not asked
        try:
            outcome = await self._record(
                meta, lambda txn: self._put_subscription(txn, meta, tenant, state, fetched, settle=settle)
            )
        except _TieAfterLookup:  # a reconcile or another event reached the same second since the lookup
            state, fetched = await self._fresh(state)
            outcome = await self._record(
                meta, lambda txn: self._put_subscription(txn, meta, tenant, state, fetched)
            )
        return self._subscription_done(meta, state, tenant, outcome)

    def _tie(self, meta: EventMeta, current: MirrorAccount | None) -> bool:
        """A same-second tie with the stored state, which Stripe settles (when we may ask it)."""
        return self.refetch and current is not None and meta.created == current.stripe_updated

    def _subscription_done(
        self, meta: EventMeta, state: SubscriptionState, tenant: str | None, outcome: str
    ) -> str:
        if outcome == "no_tenant":
            log.warning("webhook_no_tenant", event_id=meta.id, customer=state.customer_id)
        if outcome in ("applied", "refetched", "tie_unresolved") and state.unmapped_price:
            self.metrics.unmapped_prices.inc()
            log.warning(
                "unmapped_price", tenant=tenant, price=state.price_id, subscription=state.subscription_id
            )
        return outcome

    def _put_subscription(
        self,
        txn: MirrorTxn,
        meta: EventMeta,
        tenant: str,
        state: SubscriptionState,
        fetched: bool,
        *,
        settle: bool = False,
    ) -> str:
        """Apply `state`; with `settle`, a same-second tie rolls back (raises) to be fetched and retried."""
        link = txn.customer(state.customer_id) if state.customer_id else None
        if link is not None and link.deleted_at is not None and meta.created <= link.deleted_at:
            return "customer_deleted"
        before = txn.account(tenant)
        account, outcome = decide_subscription(before, state, tenant, meta.created, fetched=fetched)
        if outcome == "tie_unresolved" and settle:
            raise _TieAfterLookup
        if account is not None:
            self._changed(txn, meta, before, txn.put_account(account))
            if state.customer_id and link is None:
                txn.link_customer(CustomerLink(state.customer_id, tenant))
        if state.customer_id and state.email is not None:
            txn.note_customer_email(state.customer_id, state.email.address, meta.created)
        return outcome

    async def _fresh(self, state: SubscriptionState) -> tuple[SubscriptionState, bool]:
        """Stripe's current copy of the subscription and True; `state` and False when Stripe is away."""
        fresh = await self._fetch(state.subscription_id)
        return (state, False) if fresh is None else (fresh, True)

    async def _fetch(self, subscription_id: str) -> SubscriptionState | None:
        try:
            return self.translator.subscription(await self.billing.fetch_subscription(subscription_id))
        except BillingUnavailableError as exc:
            log.warning("refetch_failed", subscription=subscription_id, error=exc.message)
            return None

    async def _tenant_from_stripe(self, customer_id: str | None) -> str | None:
        """An event naming only a customer we have not linked yet: ask Stripe for its metadata."""
        if customer_id is None or not self.refetch:
            return None
        try:
            customer = await self.billing.fetch_customer(customer_id)
        except BillingUnavailableError as exc:
            log.warning("customer_lookup_failed", customer=customer_id, error=exc.message)
            return None
        found: str | None = (customer.get("metadata") or {}).get(self.translator.metadata_key) or None
        return found

    # -- customers, payments, checkout ---------------------------------------------------------

    def _customer(self, txn: MirrorTxn, meta: EventMeta, seen: CustomerSeen) -> str:
        link = txn.customer(seen.customer_id)
        tenant = seen.tenant or (link.tenant if link else None)
        if tenant is None:
            return "no_tenant"
        if seen.deleted:
            txn.link_customer(CustomerLink(seen.customer_id, tenant, deleted_at=meta.created))
            txn.forget_customer_email(seen.customer_id, meta.created)
            return "deleted" if txn.delete_account(tenant) else "applied"
        if link is not None and link.deleted_at is not None and meta.created <= link.deleted_at:
            return "customer_deleted"
        txn.link_customer(CustomerLink(seen.customer_id, tenant))
        if seen.email is not None:
            txn.note_customer_email(seen.customer_id, seen.email.address, meta.created)
        return "applied"

    def _payment(self, txn: MirrorTxn, meta: EventMeta, payment: PaymentOutcome) -> str:
        tenant = _tenant_in(txn, payment.tenant, payment.customer_id)
        if tenant is None:
            return "no_tenant"
        before = txn.account(tenant)
        account, outcome = decide_payment(before, payment, meta.created)
        if account is not None:
            self._changed(txn, meta, before, txn.put_account(account))
        return outcome

    def _changed(
        self, txn: MirrorTxn, meta: EventMeta, before: MirrorAccount | None, after: MirrorAccount
    ) -> None:
        if self.outbound is not None:
            cause = {"source": "stripe", "stripe_event": meta.id, "type": meta.type}
            self.outbound.account_changed(txn, before, after, cause)

    async def _checkout(self, meta: EventMeta, checkout: CheckoutCompleted) -> str:
        tenant, customer = checkout.tenant, checkout.customer_id
        if tenant is None or customer is None:
            return await self._record(meta, lambda txn: "no_tenant")
        _, _, current = await self.mirror.transact(lambda txn: _lookup(txn, meta.id, tenant, customer))
        state = None
        if current is None and checkout.subscription_id and self.refetch:
            # The subscription's own events may have come first, without a tenant: fetch it now.
            state = await self._fetch(checkout.subscription_id)

        def link(txn: MirrorTxn) -> str:
            txn.link_customer(CustomerLink(customer, tenant))
            if state is not None:
                return self._put_subscription(txn, meta, tenant, state, True)
            return "linked"

        return await self._record(meta, link)


def _lookup(
    txn: MirrorTxn, event_id: str, tenant: str | None, customer_id: str | None
) -> tuple[bool, str | None, MirrorAccount | None]:
    resolved = _tenant_in(txn, tenant, customer_id)
    return txn.seen(event_id), resolved, txn.account(resolved) if resolved else None


def _meta(event: dict[str, Any]) -> EventMeta:
    return EventMeta(str(event["id"]), str(event.get("type", "")), int(event.get("created") or 0))
