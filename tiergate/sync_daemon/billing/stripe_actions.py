"""StripeBillingActions: the BillingActions adapter over the official `stripe` library (async).

On an emulator without Prices (localstripe: `GET /v1/prices` is 404) it speaks the legacy
dialect instead: a Plan id (the lookup key) in place of a price, no `proration_behavior`
(localstripe answers 500 to it), and no Checkout, portal or schedules (501 with the reason).
"""

from __future__ import annotations

import email.utils
import re
import time
from typing import Any

import stripe

from tiergate.errors import StripeActionError, UnsupportedByStripeError
from tiergate.sync_daemon.billing.actions import (
    Answer,
    ItemChange,
    Preview,
    ScheduledChange,
)
from tiergate.sync_daemon.credits.top_ups import Charge

# Stripe masks keys in its messages already; this catches anything an emulator or proxy echoes.
_SECRET = re.compile(r"\b(sk|rk|pk|whsec)_(test_|live_)?[A-Za-z0-9*]+")


def stripe_failure(what: str, exc: stripe.StripeError, base: str) -> StripeActionError:
    """Stripe's message and request id, scrubbed of anything that looks like a key."""
    if isinstance(exc, stripe.APIConnectionError):
        message = f"Stripe at {base} could not be reached to {what}"
    else:
        said = exc.user_message or str(exc) or type(exc).__name__
        status = f"HTTP {exc.http_status}" if exc.http_status else type(exc).__name__
        message = f"Stripe refused to {what} ({status}): {said}"
    return StripeActionError(
        _SECRET.sub("[redacted]", message), request_id=exc.request_id, stripe_code=exc.code
    )


def make_client(api_key: str, base: str, http: stripe.HTTPClient, retries: int) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key, base_addresses={"api": base}, http_client=http, max_network_retries=retries
    )


async def has_prices(client: stripe.StripeClient, base: str) -> bool:
    """False on an emulator without the Prices API (localstripe answers 404)."""
    try:
        await client.v1.prices.list_async({"limit": 1})
    except stripe.StripeError as exc:
        # localstripe's 404 is a plain-text "Not Found": an APIError, not an InvalidRequestError.
        if exc.http_status == 404:
            return False
        raise stripe_failure("list prices", exc, base) from exc
    return True


def _answer(sub: stripe.Subscription) -> Answer:
    """Stripe's Date header orders this answer among webhooks (both on Stripe's clock)."""
    response = sub.last_response
    date = response.headers.get("Date") or response.headers.get("date") if response else None
    as_of = int(email.utils.parsedate_to_datetime(date).timestamp()) if date else int(time.time())
    return Answer(sub.to_dict(), as_of)


def preview_of(invoice: dict[str, Any], at: int) -> Preview:
    """The preview invoice's totals; proration lines are flagged under `parent` (or on the line, before 2025)."""
    lines = (invoice.get("lines") or {}).get("data") or []
    prorated = sum(int(line.get("amount") or 0) for line in lines if _is_proration(line))
    return Preview(
        amount_due=int(invoice.get("amount_due") or 0),
        currency=str(invoice.get("currency") or ""),
        proration_amount=prorated,
        proration_date=at,
        period_end=invoice.get("period_end"),
    )


def _is_proration(line: dict[str, Any]) -> bool:
    parent = line.get("parent") or {}
    details = parent.get(str(parent.get("type"))) if isinstance(parent, dict) else None
    if isinstance(details, dict) and "proration" in details:
        return bool(details["proration"])
    return bool(line.get("proration"))


class StripeBillingActions:
    def __init__(self, api_key: str, *, api_base: str, http: stripe.HTTPClient, retries: int = 2) -> None:
        self._base = api_base
        self._client = make_client(api_key, api_base, http, retries)
        self._prices: bool | None = None  # probed once, on first use

    def __repr__(self) -> str:  # never the key
        return f"StripeBillingActions(api_base={self._base!r})"

    async def legacy(self) -> bool:
        if self._prices is None:
            self._prices = await has_prices(self._client, self._base)
        return not self._prices

    async def price_for(self, lookup_key: str) -> str:
        if await self.legacy():
            return lookup_key  # the emulator's Plan id is the lookup key (see `tiergate plans push`)
        try:
            found = await self._client.v1.prices.list_async({"lookup_keys": [lookup_key], "active": True})
        except stripe.StripeError as exc:
            raise stripe_failure(f"look up the price {lookup_key!r}", exc, self._base) from exc
        if not found.data:
            raise StripeActionError(
                f"no active Stripe price has the lookup key {lookup_key!r}; run `tiergate plans push`"
            )
        return found.data[0].id

    async def create_customer(self, tenant: str, metadata_key: str) -> dict[str, Any]:
        # One customer per tenant, even when two first checkouts race (24 h idempotency window).
        options: stripe.RequestOptions = {"idempotency_key": f"tiergate-customer-{tenant}"}
        try:
            customer = await self._client.v1.customers.create_async(
                {"metadata": {metadata_key: tenant}}, options
            )
        except stripe.StripeError as exc:
            raise stripe_failure(f"create a customer for tenant {tenant!r}", exc, self._base) from exc
        return customer.to_dict()

    async def create_checkout_session(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        await self._require_prices("Checkout")
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]  # built and tested in billing_api.checkout_params
                {"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise stripe_failure("create a Checkout session", exc, self._base) from exc
        return session.to_dict()

    async def charge(
        self, customer_id: str, amount: int, currency: str, metadata: dict[str, str], idempotency_key: str
    ) -> Charge:
        """An automatic top-up: the customer's saved card charged off-session (credits/top_ups.py).
        A decline is an answer (`succeeded` false); anything else raises and is retried."""
        try:
            methods = await self._client.v1.payment_methods.list_async({"customer": customer_id, "limit": 1})
            if not methods.data:
                return Charge(None, False, "the customer has no saved payment method")
            intent = await self._client.v1.payment_intents.create_async(
                {
                    "amount": amount,
                    "currency": currency,
                    "customer": customer_id,
                    "payment_method": methods.data[0].id,
                    "off_session": True,
                    "confirm": True,
                    "metadata": metadata,
                },
                {"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            found: object = exc.error.payment_intent if exc.error is not None else None
            reference = getattr(found, "id", None) or (found.get("id") if isinstance(found, dict) else None)
            return Charge(str(reference) if reference else None, False, exc.user_message or str(exc))
        except stripe.StripeError as exc:
            raise stripe_failure("charge an automatic top-up", exc, self._base) from exc
        return Charge(
            str(intent.id),
            intent.status == "succeeded",
            None if intent.status == "succeeded" else intent.status,
        )

    async def completed_sessions(self, since: int) -> list[dict[str, Any]]:
        """Checkout Sessions completed since `since` (Unix seconds), for purchase reconciliation."""
        try:
            page = await self._client.v1.checkout.sessions.list_async(
                {"created": {"gte": since}, "status": "complete", "limit": 100}
            )
            return [session.to_dict() async for session in page.auto_paging_iter()]
        except stripe.StripeError as exc:
            raise stripe_failure("list completed Checkout sessions", exc, self._base) from exc

    async def create_portal_session(self, customer_id: str, return_url: str) -> dict[str, Any]:
        await self._require_prices("the customer portal")
        try:
            session = await self._client.v1.billing_portal.sessions.create_async(
                {"customer": customer_id, "return_url": return_url}
            )
        except stripe.StripeError as exc:
            raise stripe_failure("create a portal session", exc, self._base) from exc
        return session.to_dict()

    async def promotion_code_id(self, code: str) -> str | None:
        await self._require_prices("promotion codes")
        try:
            found = await self._client.v1.promotion_codes.list_async(
                {"code": code, "active": True, "limit": 1}
            )
        except stripe.StripeError as exc:
            raise stripe_failure(f"look up the promotion code {code!r}", exc, self._base) from exc
        return found.data[0].id if found.data else None

    async def preview_change(self, change: ItemChange, proration_behavior: str, at: int) -> Preview:
        """Stripe's preview invoice (`POST /v1/invoices/create_preview`) for the change made at `at`."""
        await self._require_prices("a proration preview (preview invoices)")
        item = {"id": change.item_id, "price": change.price, "quantity": change.quantity}
        params: dict[str, Any] = {
            "subscription": change.subscription_id,
            "subscription_details": {
                "items": [item],
                "proration_behavior": proration_behavior,
                "proration_date": at,
            },
        }
        try:
            invoice = await self._client.v1.invoices.create_preview_async(params)  # type: ignore[arg-type]  # plain dict params
        except stripe.StripeError as exc:
            raise stripe_failure(f"preview a change of {change.subscription_id}", exc, self._base) from exc
        return preview_of(invoice.to_dict(), at)

    async def subscription(self, subscription_id: str) -> dict[str, Any]:
        try:
            sub = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.StripeError as exc:
            raise stripe_failure(f"read subscription {subscription_id}", exc, self._base) from exc
        return sub.to_dict()

    async def change_now(
        self, change: ItemChange, proration_behavior: str, proration_date: int | None = None
    ) -> Answer:
        legacy = await self.legacy()
        if legacy and proration_date is not None:
            await self._require_prices("a change prorated at a given proration_date")
        item: dict[str, Any] = {"id": change.item_id, "quantity": change.quantity}
        item["plan" if legacy else "price"] = change.price
        params: dict[str, Any] = {"items": [item]}
        if not legacy:
            params["proration_behavior"] = proration_behavior
        if proration_date is not None:
            params["proration_date"] = proration_date
        try:
            sub = await self._client.v1.subscriptions.update_async(change.subscription_id, params)  # type: ignore[arg-type]  # dialect chosen above
        except stripe.StripeError as exc:
            raise stripe_failure(f"change subscription {change.subscription_id}", exc, self._base) from exc
        return _answer(sub)

    async def schedule_change(self, change: ScheduledChange, idempotency_key: str) -> dict[str, Any]:
        await self._require_prices("a change at the period end (subscription schedules)")
        schedules = self._client.v1.subscription_schedules
        try:
            schedule = await schedules.create_async(
                {"from_subscription": change.subscription_id}, {"idempotency_key": idempotency_key}
            )
            current = schedule.phases[0]
            updated = await schedules.update_async(
                schedule.id,
                {
                    "end_behavior": "release",  # after the new phase, a plain subscription again
                    "proration_behavior": "none",  # the switch happens on the boundary: nothing to prorate
                    "phases": [
                        {
                            "items": [{"price": change.current_price, "quantity": change.current_quantity}],
                            "start_date": current.start_date,
                            "end_date": change.starts_at,
                        },
                        {
                            "items": [{"price": change.price, "quantity": change.quantity}],
                            "duration": {"interval": change.interval, "interval_count": 1},
                        },
                    ],
                },
            )
        except stripe.StripeError as exc:
            raise stripe_failure(f"schedule a change of {change.subscription_id}", exc, self._base) from exc
        return updated.to_dict()

    async def release_schedule(self, schedule_id: str) -> None:
        try:
            await self._client.v1.subscription_schedules.release_async(schedule_id)
        except stripe.StripeError as exc:
            raise stripe_failure(f"release schedule {schedule_id}", exc, self._base) from exc

    async def set_cancel_at_period_end(self, subscription_id: str, cancel: bool) -> Answer:
        try:
            sub = await self._client.v1.subscriptions.update_async(
                subscription_id, {"cancel_at_period_end": cancel}
            )
        except stripe.StripeError as exc:
            verb = "cancel" if cancel else "resume"
            raise stripe_failure(f"{verb} subscription {subscription_id}", exc, self._base) from exc
        return _answer(sub)

    async def cancel_now(self, subscription_id: str) -> Answer:
        try:
            sub = await self._client.v1.subscriptions.cancel_async(subscription_id)
        except stripe.StripeError as exc:
            raise stripe_failure(f"cancel subscription {subscription_id}", exc, self._base) from exc
        return _answer(sub)

    async def _require_prices(self, what: str) -> None:
        if await self.legacy():
            raise UnsupportedByStripeError(
                f"the Stripe API at {self._base} has no Prices API (an emulator such as localstripe), "
                f"so it cannot do {what}; use Stripe test mode (see docs/billing.md)"
            )
