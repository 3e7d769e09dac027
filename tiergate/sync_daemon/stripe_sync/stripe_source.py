"""StripeBilling: the BillingSource adapter over the official `stripe` library (async, aiohttp)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import stripe

from tiergate.errors import BillingUnavailableError, WebhookRejectedError

TOLERANCE_S = 300


class StripeBilling:
    def __init__(
        self, api_key: str, webhook_secret: str, *, api_base: str, retries: int = 2, timeout_s: float = 10.0
    ) -> None:
        self._base = api_base
        self._secret = webhook_secret
        self._http = stripe.AIOHTTPClient(timeout=timeout_s)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            http_client=self._http,
            max_network_retries=retries,
        )

    def __repr__(self) -> str:  # never the key or the secret
        return f"StripeBilling(api_base={self._base!r})"

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        if not signature:
            raise WebhookRejectedError("no Stripe-Signature header", field="Stripe-Signature")
        try:
            # The official verification, then a plain parse: construct_event would also build a
            # StripeObject tree we only turn back into a dict (~85% of the handler's time).
            stripe.WebhookSignature.verify_header(payload, signature, self._secret, TOLERANCE_S)
            event = orjson.loads(payload)
        except stripe.SignatureVerificationError as exc:
            # The library's message says which check failed (no v1, mismatch, outside tolerance).
            raise WebhookRejectedError(
                f"Stripe-Signature rejected: {exc.user_message or 'verification failed'}",
                field="Stripe-Signature",
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise WebhookRejectedError(f"body is not a Stripe event: {exc}", field="body") from None
        if not isinstance(event, dict) or event.get("object") != "event":
            raise WebhookRejectedError("body is not a Stripe event object", field="body")
        return event

    async def fetch_subscription(self, subscription_id: str) -> dict[str, Any]:
        try:
            sub = await self._client.v1.subscriptions.retrieve_async(
                subscription_id, {"expand": ["customer"]}
            )
        except stripe.StripeError as exc:
            raise self._unavailable(f"subscription {subscription_id}", exc) from exc
        return sub.to_dict()

    async def fetch_customer(self, customer_id: str) -> dict[str, Any]:
        try:
            customer = await self._client.v1.customers.retrieve_async(customer_id)
        except stripe.StripeError as exc:
            raise self._unavailable(f"customer {customer_id}", exc) from exc
        return customer.to_dict()

    async def list_subscriptions(self) -> AsyncIterator[dict[str, Any]]:
        try:
            page = await self._client.v1.subscriptions.list_async(
                {"status": "all", "limit": 100, "expand": ["data.customer"]}
            )
            async for sub in page.auto_paging_iter():
                yield sub.to_dict()
        except stripe.StripeError as exc:
            raise self._unavailable("the subscription list", exc) from exc

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]  # the library leaves it untyped

    def _unavailable(self, what: str, exc: stripe.StripeError) -> BillingUnavailableError:
        status = f"HTTP {exc.http_status}" if exc.http_status else type(exc).__name__
        return BillingUnavailableError(f"Stripe at {self._base} did not return {what} ({status})")
