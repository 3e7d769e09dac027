"""Stripe events that move credits: pack purchases, refunds of them, Stripe billing credit grants.

`credit_intent` reads an event's object (pure); `apply_credit_intent` runs in the webhook's
transaction (tiergate/sync_daemon/stripe_sync/apply.py), which also records the event id, so a
replay changes nothing. Each grant is made once per Stripe object (its `source_ref`: the Checkout
Session, the payment intent of a top-up, the credit grant), whichever of its events arrives
first, so a reordered, replayed or reconciled delivery grants once. A refund voids the refunded
share of the purchase's grant, never more than is unspent; a refund seen before its grant is
kept and applied when the grant is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from tiergate.amounts import Amount, exact
from tiergate.catalog import Catalog
from tiergate.credits import subtract
from tiergate.errors import WebhookRejectedError
from tiergate.periods import rfc3339
from tiergate.sync_daemon.credits.events import Event, balance_events, granted_event, send
from tiergate.sync_daemon.credits.ledger import (
    Grant,
    NewGrant,
    add_grant,
    grant_by_ref,
    grants_paid_by,
    set_expiry,
    void_grant,
    voided_for,
)
from tiergate.sync_daemon.mirror.schema import CREDIT_REFUNDS
from tiergate.sync_daemon.mirror.store import MirrorTxn
from tiergate.sync_daemon.stripe_sync.translate import from_epoch

PACK_KEY = "credit_pack"  # Checkout Session / PaymentIntent metadata naming the catalog pack
TOP_UP_KEY = "credit_top_up"  # "true" on the PaymentIntent of an automatic top-up
PAID = frozenset({"paid", "no_payment_required"})
CREDIT_EVENTS = frozenset(
    {
        "checkout.session.async_payment_succeeded",
        "payment_intent.succeeded",
        "charge.refunded",
        "billing.credit_grant.created",
        "billing.credit_grant.updated",
        "billing.credit_grant.voided",
    }
)


@dataclass(frozen=True)
class PackPurchase:
    """A paid Checkout Session (or an off-session top-up's PaymentIntent) for a catalog pack."""

    ref: str  # the Checkout Session's id, or the PaymentIntent's for a top-up
    tenant: str | None
    customer_id: str | None
    pack: str
    payment_ref: str | None  # the PaymentIntent: what its refunds name
    paid: bool


@dataclass(frozen=True)
class ChargeRefund:
    payment_ref: str
    refunded: int  # minor units refunded so far (Stripe's cumulative amount_refunded)
    paid: int  # minor units charged


@dataclass(frozen=True)
class StripeCreditGrant:
    id: str
    customer_id: str | None
    tenant: str | None
    value: int  # minor units of `currency`
    currency: str
    category: str
    priority: int
    effective_at: datetime | None
    expires_at: datetime | None
    voided: bool


CreditIntent = PackPurchase | ChargeRefund | StripeCreditGrant


def credit_event(event: dict[str, Any], metadata_key: str) -> CreditIntent | None:
    """A webhook event's meaning for credits; None: not a credits event (the mirror's own path)."""
    kind = str(event.get("type", ""))
    if kind not in CREDIT_EVENTS and kind != "checkout.session.completed":
        return None
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise WebhookRejectedError("data.object: expected the event's object", field="data.object")
    return credit_intent(kind, obj, metadata_key)


def credit_intent(kind: str, obj: dict[str, Any], metadata_key: str) -> CreditIntent | None:
    """What a Stripe object means for credits; None: nothing (a subscription's Checkout, say)."""
    found = obj.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    tenant = _text(metadata.get(metadata_key))
    pack = _text(metadata.get(PACK_KEY))
    if kind.startswith("checkout.session."):
        if obj.get("mode") != "payment" or pack is None:
            return None
        ref = _required(obj, "id")
        tenant = _text(obj.get("client_reference_id")) or tenant
        paid = obj.get("payment_status") in PAID
        return PackPurchase(
            ref, tenant, _ref(obj.get("customer")), pack, _ref(obj.get("payment_intent")), paid
        )
    if kind == "payment_intent.succeeded":
        if pack is None or metadata.get(TOP_UP_KEY) != "true":
            return None  # a Checkout's own intent: its session grants
        ref = _required(obj, "id")
        return PackPurchase(ref, tenant, _ref(obj.get("customer")), pack, ref, True)
    if kind == "charge.refunded":
        payment = _ref(obj.get("payment_intent"))
        if payment is None:
            return None
        return ChargeRefund(payment, _minor(obj, "amount_refunded"), _minor(obj, "amount"))
    if kind.startswith("billing.credit_grant."):
        return _credit_grant(obj, tenant)
    return None


def _credit_grant(obj: dict[str, Any], tenant: str | None) -> StripeCreditGrant | None:
    amount = obj.get("amount")
    monetary = amount.get("monetary") if isinstance(amount, dict) else None
    if not isinstance(monetary, dict):
        return None  # a grant of another kind than money: nothing to mirror
    priority = obj.get("priority")
    return StripeCreditGrant(
        id=_required(obj, "id"),
        customer_id=_ref(obj.get("customer")),
        tenant=tenant,
        value=_minor(monetary, "value"),
        currency=str(monetary.get("currency") or ""),
        category="promotional" if obj.get("category") == "promotional" else "paid",
        priority=priority if isinstance(priority, int) and 0 <= priority <= 100 else 50,
        effective_at=from_epoch(obj.get("effective_at"), "effective_at"),
        expires_at=from_epoch(obj.get("expires_at"), "expires_at"),
        voided=obj.get("voided_at") is not None,
    )


def apply_credit_intent(
    txn: MirrorTxn,
    catalog: Catalog,
    intent: CreditIntent,
    tenant: str | None,
    now: datetime,
    endpoints: Sequence[str],
) -> str:
    """Apply in the webhook's transaction; the outcome recorded with the event id."""
    events: list[Event] = []
    if isinstance(intent, ChargeRefund):
        outcome = _refund(txn, catalog, intent, now, events)
    elif tenant is None:
        outcome = "no_tenant"
    elif isinstance(intent, PackPurchase):
        outcome = _purchase(txn, catalog, intent, tenant, now, events)
    else:
        outcome = _stripe_grant(txn, catalog, intent, tenant, now, events)
    send(txn, endpoints, events)
    return outcome


def _purchase(
    txn: MirrorTxn, catalog: Catalog, purchase: PackPurchase, tenant: str, now: datetime, events: list[Event]
) -> str:
    pack = catalog.packs.get(purchase.pack)
    if pack is None:
        return "unknown_pack"
    if not purchase.paid:
        return "unpaid"  # an asynchronous payment: its async_payment_succeeded grants
    expires = now + timedelta(days=pack.expires_days) if pack.expires_days else None
    new = NewGrant(
        tenant,
        pack.credits,
        pack.amount,
        "paid",
        "purchase",
        purchase.ref,
        pack.priority,
        None,
        expires,
        None,
        f"pack {purchase.pack}",
        purchase.payment_ref,
    )
    grant, created = add_grant(txn, new, now)
    if not created:
        return "already_granted"
    events.append(granted_event(grant))
    if purchase.payment_ref is not None:
        _refund_seen_before(txn, catalog, grant, purchase.payment_ref, now, events)
    return "granted"


def _refund(
    txn: MirrorTxn, catalog: Catalog, refund: ChargeRefund, now: datetime, events: list[Event]
) -> str:
    grants = grants_paid_by(txn.sql, refund.payment_ref)
    if not grants:  # the grant's own event has not come yet: it applies the refund when it does
        txn.upsert(
            CREDIT_REFUNDS,
            {
                "payment_ref": refund.payment_ref,
                "refunded": refund.refunded,
                "paid": refund.paid,
                "at": rfc3339(now),
            },
            "payment_ref",
        )
        return "refund_kept"
    took: Amount = 0
    for grant in grants:
        took = exact(Decimal(took) + Decimal(_void_refunded(txn, catalog, grant, refund, now, events)))
    return "refund_voided" if took else "refund_nothing_left"


def _refund_seen_before(
    txn: MirrorTxn, catalog: Catalog, grant: Grant, payment_ref: str, now: datetime, events: list[Event]
) -> None:
    row = txn.sql.execute(
        f"SELECT refunded, paid FROM {CREDIT_REFUNDS} WHERE payment_ref = ?", [payment_ref]
    ).fetchone()
    if row is not None:
        _void_refunded(txn, catalog, grant, ChargeRefund(payment_ref, int(row[0]), int(row[1])), now, events)


def _void_refunded(
    txn: MirrorTxn, catalog: Catalog, grant: Grant, refund: ChargeRefund, now: datetime, events: list[Event]
) -> Amount:
    """Void the refunded share of the grant (rounded up to the type's decimals) not voided yet
    for this payment, at most what is unspent."""
    note = f"refund:{refund.payment_ref}"
    share = refunded_share(grant.amount, refund.refunded, refund.paid, _decimals(catalog, grant.credit_type))
    due = subtract(share, voided_for(txn.sql, grant.id, note))
    if due <= 0:
        return 0
    voided = void_grant(txn, grant.tenant, grant.id, now, at_most=due, note=note)
    if voided is None or voided.moved is None:
        return 0
    events.extend(balance_events(catalog, voided.moved))
    return voided.voided


def refunded_share(amount: Amount, refunded: int, paid: int, decimals: int) -> Amount:
    """The credits a refund of `refunded` of `paid` minor units takes back, rounded up (pure)."""
    if paid <= 0 or refunded >= paid:
        return amount
    share = Decimal(amount) * refunded / paid
    return exact(share.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_CEILING))


def _stripe_grant(
    txn: MirrorTxn,
    catalog: Catalog,
    mirrored: StripeCreditGrant,
    tenant: str,
    now: datetime,
    events: list[Event],
) -> str:
    credit_type = catalog.credit_type_for_stripe(mirrored.currency)
    if credit_type is None:
        return "unmapped_currency"
    held = grant_by_ref(txn.sql, tenant, "stripe", mirrored.id)
    if held is None:
        rate = catalog.credits[credit_type].stripe_grants
        assert rate is not None
        amount = exact(Decimal(mirrored.value) * Decimal(rate.per_minor_unit))
        if amount <= 0:
            return "empty_grant"
        new = NewGrant(
            tenant,
            credit_type,
            amount,
            "paid" if mirrored.category == "paid" else "promotional",
            "stripe",
            mirrored.id,
            mirrored.priority,
            mirrored.effective_at,
            mirrored.expires_at,
            None,
            "Stripe credit grant",
        )
        held, _ = add_grant(txn, new, now)
        events.append(granted_event(held))
    if mirrored.voided:
        voided = void_grant(txn, tenant, held.id, now)
        if voided is not None and voided.moved is not None:
            events.extend(balance_events(catalog, voided.moved))
        return "voided"
    set_expiry(txn, held, mirrored.expires_at, now)
    return "mirrored"


def _decimals(catalog: Catalog, credit_type: str) -> int:
    kind = catalog.credits.get(credit_type)
    return kind.decimals if kind is not None else 6


def _ref(value: Any) -> str | None:
    """An id, or the expanded object's id."""
    found = value.get("id") if isinstance(value, dict) else value
    return _text(found)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _required(obj: dict[str, Any], field: str) -> str:
    found = _text(obj.get(field))
    if found is None:
        raise WebhookRejectedError(
            f"data.object.{field}={obj.get(field)!r}: expected the object's id", field=f"data.object.{field}"
        )
    return found


def _minor(obj: dict[str, Any], field: str) -> int:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WebhookRejectedError(
            f"data.object.{field}={value!r}: expected minor units (a whole number >= 0)",
            field=f"data.object.{field}",
        )
    return value


def reconcile_purchase(
    txn: MirrorTxn,
    catalog: Catalog,
    session: dict[str, Any],
    metadata_key: str,
    now: datetime,
    endpoints: Sequence[str],
) -> str:
    """A completed Checkout Session found by listing them (webhooks lost): granted once, like the
    webhook would have (the session is the grant's key: a later webhook finds it granted)."""
    intent = credit_intent("checkout.session.completed", session, metadata_key)
    if not isinstance(intent, PackPurchase):
        return "not_a_pack"
    tenant = intent.tenant
    if tenant is None and intent.customer_id is not None:
        link = txn.customer(intent.customer_id)
        tenant = link.tenant if link else None
    return apply_credit_intent(txn, catalog, intent, tenant, now, endpoints)
