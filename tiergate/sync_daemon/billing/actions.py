"""The BillingActions port: the Stripe calls behind the daemon's billing API, and their errors.

Kept apart from BillingSource (what the mirror reads): reading Stripe and changing it are two
concerns with two different fakes in tests. Every method returns Stripe's object as a plain dict
in Stripe's shape, so the mirror is updated through the same translation webhooks use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ItemChange:
    """Replace the subscription's item `item_id` with `price` (an id, or a Plan id on an emulator)."""

    subscription_id: str
    item_id: str
    price: str
    quantity: int


@dataclass(frozen=True)
class ScheduledChange:
    """From the end of the current phase, bill `price` x `quantity` instead of the current item."""

    subscription_id: str
    current_price: str
    current_quantity: int
    price: str
    quantity: int
    interval: str  # the new price's billing interval: the new phase lasts one of them, then runs on
    starts_at: int  # epoch seconds: the current period's end


@dataclass(frozen=True)
class Answer:
    """A subscription as Stripe returned it, and when (Stripe's clock), to order it among webhooks."""

    subscription: dict[str, Any]
    as_of: int


@dataclass(frozen=True)
class Preview:
    """Stripe's preview invoice for a change made at `proration_date` (epoch seconds)."""

    amount_due: int  # minor units
    currency: str
    proration_amount: int  # the sum of the proration lines (credit for the old item, charge for the new)
    proration_date: int
    period_end: int | None  # when the previewed invoice would be issued, if it is not immediate


class CheckoutActions(Protocol):
    """Starting and managing a purchase: what a tenant without a subscription needs."""

    async def price_for(self, lookup_key: str) -> str: ...

    async def create_customer(self, tenant: str, metadata_key: str) -> dict[str, Any]: ...

    async def create_checkout_session(
        self, params: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]: ...

    async def create_portal_session(self, customer_id: str, return_url: str) -> dict[str, Any]: ...

    async def promotion_code_id(self, code: str) -> str | None:
        """The id of the active promotion code a customer would type as `code`; None if none is."""
        ...


class SubscriptionActions(Protocol):
    """Changing a live subscription: now, at the period end, or not at all any more."""

    async def subscription(self, subscription_id: str) -> dict[str, Any]: ...

    async def change_now(
        self, change: ItemChange, proration_behavior: str, proration_date: int | None = None
    ) -> Answer:
        """Stripe prorates as at `proration_date` (epoch seconds) when given, else at the call."""
        ...

    async def schedule_change(self, change: ScheduledChange, idempotency_key: str) -> dict[str, Any]: ...

    async def release_schedule(self, schedule_id: str) -> None: ...

    async def set_cancel_at_period_end(self, subscription_id: str, cancel: bool) -> Answer: ...

    async def cancel_now(self, subscription_id: str) -> Answer: ...

    async def preview_change(self, change: ItemChange, proration_behavior: str, at: int) -> Preview: ...


class BillingActions(CheckoutActions, SubscriptionActions, Protocol):
    """Both halves, as one Stripe adapter implements them."""
