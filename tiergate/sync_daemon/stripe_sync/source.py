"""The BillingSource port: what the daemon needs from Stripe, as plain dicts in Stripe's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class BillingSource(Protocol):
    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]: ...

    async def fetch_subscription(self, subscription_id: str) -> dict[str, Any]: ...

    async def fetch_customer(self, customer_id: str) -> dict[str, Any]: ...

    def list_subscriptions(self) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None: ...
