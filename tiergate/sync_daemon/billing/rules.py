"""Pure rules of the billing API: which price, now or at the period end, what Checkout is sent.

No I/O: the handlers in billing_api.py fetch, call these, then act; the tests need no loop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from tiergate.catalog import Catalog, CheckoutOptions, Price
from tiergate.errors import BadRequestError, ConflictError, NoSubscriptionError
from tiergate.sync_daemon.billing.actions import Preview
from tiergate.sync_daemon.mirror.store import MirrorAccount

# A subscription in one of these states is live: the tenant changes it rather than buying again.
HOLDS_SUBSCRIPTION = frozenset({"trialing", "active", "past_due", "unpaid", "paused"})
Timing = Literal["now", "period_end"]


@dataclass(frozen=True)
class Target:
    tier: str
    interval: str
    quantity: int
    lookup_key: str


def sold_price(catalog: Catalog, tier: str, interval: str) -> Price:
    """The catalog's price for (tier, interval); a 400 naming the allowed values otherwise."""
    sold = sorted(name for name, t in catalog.tiers.items() if t.prices)
    found = catalog.tiers.get(tier)
    if found is None or not found.prices:
        raise BadRequestError(f"tier {tier!r} is not for sale; allowed tiers: {sold}", field="tier")
    price = found.prices.get(interval)  # type: ignore[call-overload]  # a str that may not be an Interval
    if price is None:
        raise BadRequestError(
            f"tier {tier!r} has no {interval!r} price; allowed intervals: {sorted(found.prices)}",
            field="interval",
        )
    assert isinstance(price, Price)
    return price


def live_subscription(account: MirrorAccount | None, tenant: str) -> MirrorAccount:
    """The account, if it holds a subscription that can be changed or canceled (else a 409)."""
    if account is None or account.subscription_id is None or account.status not in HOLDS_SUBSCRIPTION:
        state = "no account" if account is None else f"status {account.status!r}"
        raise NoSubscriptionError(
            f"tenant {tenant!r} has no live subscription ({state}); start one with POST /v1/checkout/sessions"
        )
    return account


def change_target(
    catalog: Catalog, account: MirrorAccount, tier: str | None, interval: str | None, quantity: int | None
) -> Target:
    """The requested state; what the request leaves out stays as it is."""
    new_tier = tier or account.tier
    new_interval = interval or account.interval or "month"
    price = sold_price(catalog, new_tier, new_interval)
    return Target(new_tier, new_interval, quantity or account.quantity, price.lookup_key)


def change_timing(catalog: Catalog, account: MirrorAccount, target: Target) -> Timing | None:
    """`now` for an upgrade, more seats or a new interval; `period_end` for a lower rank.

    A lower rank waits: the tenant paid for the current period's tier and keeps it until the
    period ends. None when the target is what the account already has.
    """
    if (target.tier, target.interval, target.quantity) == (account.tier, account.interval, account.quantity):
        return None
    current = catalog.tiers.get(account.tier)
    if current is not None and catalog.tiers[target.tier].rank < current.rank:
        return "period_end"
    return "now"


@dataclass(frozen=True)
class Discount:
    """What Checkout applies from the start: Stripe's `discounts[0]` (a promotion code id or a coupon)."""

    kind: Literal["promotion_code", "coupon"]
    id: str


@dataclass(frozen=True)
class CheckoutChoice:
    """The catalog's `checkout:` defaults with the request's own choices applied."""

    allow_promotion_codes: bool = False
    automatic_tax: bool = False
    tax_id_collection: bool = False
    billing_address_collection: str | None = None
    currency: str | None = None
    discount: Discount | None = None


def checkout_choice(
    defaults: CheckoutOptions,
    price: Price,
    *,
    discount: Discount | None = None,
    currency: str | None = None,
    allow_promotion_codes: bool | None = None,
    automatic_tax: bool | None = None,
    tax_id_collection: bool | None = None,
    billing_address_collection: str | None = None,
) -> CheckoutChoice:
    """Each option from the request when given, else the catalog's; a 400 for what Stripe would refuse."""
    if currency is not None and currency not in price.currencies:
        raise BadRequestError(
            f"the {price.lookup_key!r} price is not sold in {currency!r}; allowed currencies: "
            f"{price.currencies} (add currency_options to the catalog's price and run `tiergate plans push`)",
            field="currency",
        )
    if discount is not None and allow_promotion_codes:
        raise BadRequestError(
            "Stripe takes either a discount (promotion_code or coupon) or allow_promotion_codes, not both",
            field="allow_promotion_codes",
        )
    promotions = defaults.allow_promotion_codes if allow_promotion_codes is None else allow_promotion_codes
    return CheckoutChoice(
        # A discount fixed by the request replaces the code box (Stripe refuses both at once).
        allow_promotion_codes=promotions and discount is None,
        automatic_tax=defaults.automatic_tax if automatic_tax is None else automatic_tax,
        tax_id_collection=defaults.tax_id_collection if tax_id_collection is None else tax_id_collection,
        billing_address_collection=billing_address_collection or defaults.billing_address_collection,
        currency=currency,
        discount=discount,
    )


def checkout_params(
    *,
    tenant: str,
    customer_id: str,
    price_id: str,
    quantity: int,
    trial_days: int,
    success_url: str,
    cancel_url: str,
    metadata_key: str,
    tier: str,
    interval: str,
    choice: CheckoutChoice | None = None,
) -> dict[str, Any]:
    """A subscription-mode Checkout Session carrying the tenant everywhere a webhook may look."""
    subscription_data: dict[str, Any] = {"metadata": {metadata_key: tenant}}
    if trial_days > 0:
        subscription_data["trial_period_days"] = trial_days
    params: dict[str, Any] = {
        "mode": "subscription",
        "customer": customer_id,
        "client_reference_id": tenant,
        "line_items": [{"price": price_id, "quantity": quantity}],
        "subscription_data": subscription_data,
        "metadata": {metadata_key: tenant, "tier": tier, "interval": interval},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    return params | checkout_option_params(choice or CheckoutChoice())


def checkout_option_params(choice: CheckoutChoice) -> dict[str, Any]:
    """The Checkout Session parameters for `choice`, as Stripe's API names them.

    Checkout always runs for an existing customer here, so automatic tax needs
    `customer_update[address]=auto` (Stripe computes tax from the address entered) and tax id
    collection needs `customer_update[name]=auto` (the business name is saved on the customer).
    """
    params: dict[str, Any] = {}
    update: dict[str, str] = {}
    if choice.allow_promotion_codes:
        params["allow_promotion_codes"] = True
    if choice.discount is not None:
        params["discounts"] = [{choice.discount.kind: choice.discount.id}]
    if choice.automatic_tax:
        params["automatic_tax"] = {"enabled": True}
        update["address"] = "auto"
    if choice.tax_id_collection:
        params["tax_id_collection"] = {"enabled": True}
        update |= {"name": "auto", "address": "auto"}
    if choice.billing_address_collection is not None:
        params["billing_address_collection"] = choice.billing_address_collection
    if choice.currency is not None:
        params["currency"] = choice.currency
    if update:
        params["customer_update"] = update
    return params


def idempotency_key(action: str, tenant: str, given: str | None, body: dict[str, Any]) -> str:
    """The caller's Idempotency-Key scoped to the action and tenant, else one derived from the body.

    Derived keys make a blind retry of the same request return the same Stripe object (for
    Stripe's 24 hours); a caller that wants a fresh one sends its own key.
    """
    basis = given if given else json.dumps(body, sort_keys=True, default=str)
    digest = hashlib.sha256(f"{action}|{tenant}|{basis}".encode()).hexdigest()[:40]
    return f"tiergate-{action}-{digest}"


def main_item(subscription: dict[str, Any]) -> tuple[str, str, int]:
    """(item id, price or plan id, quantity) of the subscription's first item."""
    items = (subscription.get("items") or {}).get("data") or []
    if not items:
        raise ConflictError(f"subscription {subscription.get('id')} has no items to change")
    item = items[0]
    price = item.get("price") or item.get("plan") or {}
    price_id = price.get("id") if isinstance(price, dict) else price
    return str(item["id"]), str(price_id), int(item.get("quantity") or subscription.get("quantity") or 1)


def schedule_id(subscription: dict[str, Any]) -> str | None:
    found = subscription.get("schedule")
    if isinstance(found, dict):
        found = found.get("id")
    return found if isinstance(found, str) and found else None


def period_end(subscription: dict[str, Any]) -> int | None:
    return _period_bound(subscription, "current_period_end")


def period_start(subscription: dict[str, Any]) -> int | None:
    return _period_bound(subscription, "current_period_start")


def _period_bound(subscription: dict[str, Any], name: str) -> int | None:
    """The first item's `name` (Stripe moved the period to the items in 2025), else the subscription's."""
    items = (subscription.get("items") or {}).get("data") or [{}]
    found = items[0].get(name) or subscription.get(name)
    return int(found) if found else None


# How far past the daemon's clock a proration_date may be: the clocks of several daemons differ.
PRORATION_SKEW_S = 60


def proration_date(
    given: int | None, timing: Timing, period: tuple[int | None, int | None], now: int
) -> int | None:
    """The caller's `proration_date` (from a preview) once it is a moment of the current period
    that has come (within PRORATION_SKEW_S); None when not given. A 400 naming the field otherwise."""
    if given is None:
        return None
    start, end = period
    problem = None
    if timing != "now":
        problem = "applies only to a change made now; this change waits for the period end, unprorated"
    elif given > now + PRORATION_SKEW_S:
        problem = f"is in the future (the daemon's clock says {now})"
    elif start is not None and given < start:
        problem = f"is before the current period began ({start}); preview the change again"
    elif end is not None and given >= end:
        problem = f"is not before the current period's end ({end}); preview the change again"
    if problem is not None:
        raise BadRequestError(f"proration_date {given} {problem}", field="proration_date")
    return given


def preview_answer(preview: Preview, proration_behavior: str) -> dict[str, Any]:
    """What a change now costs: charged at once with `always_invoice`, else on the next invoice.

    With `create_prorations` the prorations wait for the next regular invoice (`next_invoice`);
    with `none` nothing is prorated and the new price starts with the next period.
    """
    immediate = proration_behavior == "always_invoice"
    answer: dict[str, Any] = {
        "amount_due_now": preview.amount_due if immediate else 0,
        "currency": preview.currency,
        "proration_amount": preview.proration_amount,
        "proration_behavior": proration_behavior,
        "proration_date": preview.proration_date,
    }
    if not immediate:
        answer["next_invoice"] = {"amount_due": preview.amount_due, "at": preview.period_end}
    return answer
