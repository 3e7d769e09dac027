"""Pure rules of the billing API: which price, now or at the period end, what Checkout is sent.

No I/O: the handlers in billing_api.py fetch, call these, then act; the tests need no loop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from sync_daemon.mirror.store import MirrorAccount
from tiergate.catalog import Catalog, Price
from tiergate.errors import BadRequestError, ConflictError, NoSubscriptionError

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
) -> dict[str, Any]:
    """A subscription-mode Checkout Session carrying the tenant everywhere a webhook may look."""
    subscription_data: dict[str, Any] = {"metadata": {metadata_key: tenant}}
    if trial_days > 0:
        subscription_data["trial_period_days"] = trial_days
    return {
        "mode": "subscription",
        "customer": customer_id,
        "client_reference_id": tenant,
        "line_items": [{"price": price_id, "quantity": quantity}],
        "subscription_data": subscription_data,
        "metadata": {metadata_key: tenant, "tier": tier, "interval": interval},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }


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
    items = (subscription.get("items") or {}).get("data") or [{}]
    end = items[0].get("current_period_end") or subscription.get("current_period_end")
    return int(end) if end else None
