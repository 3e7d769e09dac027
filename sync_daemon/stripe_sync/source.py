"""The BillingSource port: what the daemon needs from Stripe, as plain dicts in Stripe's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from tiergate.errors import TierError


class WebhookRejectedError(TierError):
    """A webhook whose signature, timestamp or body we cannot trust: 400, nothing stored."""

    code = "webhook_rejected"
    status = 400


class BillingUnavailableError(TierError):
    """Stripe (or the emulator at TIERGATE_STRIPE_API_BASE) gave no usable answer."""

    code = "stripe_unavailable"
    status = 503


class BillingSource(Protocol):
    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]: ...

    async def fetch_subscription(self, subscription_id: str) -> dict[str, Any]: ...

    async def fetch_customer(self, customer_id: str) -> dict[str, Any]: ...

    def list_subscriptions(self) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None: ...
