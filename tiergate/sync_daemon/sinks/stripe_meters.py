"""The Stripe meter sink: stored events to Stripe Billing Meter events, one call per event.

Each catalog metric with a `meter` (the meter's `event_name`) is sent as
`POST /v1/billing/meter_events` with `identifier` = the transaction id (Stripe enforces its
uniqueness for at least 24 hours), the tenant's Stripe customer and the event's value in the
payload, and the event's time. The same transaction id is the idempotency key, so a repeat after
a crash within 24 hours gets Stripe's first answer back instead of a second event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import stripe

from tiergate.amounts import stored
from tiergate.sync_daemon.sinks.runner import SinkUnavailableError
from tiergate.sync_daemon.sinks.store import SinkEvent

CONCURRENCY = 8  # meter-event calls in flight per batch (Stripe's live rate limit is per second)


def meter_event(event: SinkEvent, event_name: str, customer: str) -> dict[str, Any]:
    """The meter event's parameters (pure)."""
    return {
        "event_name": event_name,
        "identifier": event.document.get("transaction_id", f"seq-{event.seq}")[:100],
        "payload": {"stripe_customer_id": customer, "value": str(stored(event.value))},
        "timestamp": int(datetime.fromisoformat(event.occurred_at).timestamp()),
    }


def already_sent(exc: stripe.StripeError) -> bool:
    """Stripe refused the identifier as one it has seen: the event is there (counts as delivered)."""
    text = f"{exc.code or ''} {exc.user_message or exc}".lower()
    return "identifier" in text and ("already" in text or "duplicate" in text or "exists" in text)


class StripeMeterSink:
    """`Sink` over Stripe's meter events; `meters` maps a catalog metric code to its meter's event_name."""

    name = "stripe_meters"

    def __init__(self, client: stripe.StripeClient, meters: Mapping[str, str], batch_size: int = 50) -> None:
        self._client = client
        self._meters = dict(meters)
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"StripeMeterSink(meters={sorted(self._meters)})"  # never the key

    async def send(self, events: Sequence[SinkEvent]) -> dict[int, str]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(event: SinkEvent) -> tuple[int, str | None]:
            async with gate:
                return event.seq, await self._send_one(event)

        answers = await asyncio.gather(*(one(e) for e in events))
        return {seq: reason for seq, reason in answers if reason is not None}

    async def _send_one(self, event: SinkEvent) -> str | None:
        """None when Stripe has the event (or it is not metered); the reason when refused for good."""
        event_name = self._meters.get(event.code)
        if event_name is None:
            return None  # a metric without a meter is not billed through Stripe
        if event.stripe_customer_id is None:
            return f"tenant {event.tenant!r} has no Stripe customer to bill"
        params = meter_event(event, event_name, event.stripe_customer_id)
        options: stripe.RequestOptions = {"idempotency_key": f"tiergate-meter-{params['identifier']}"}
        try:
            await self._client.v1.billing.meter_events.create_async(params, options)  # type: ignore[arg-type]  # plain dict params
        except stripe.IdempotencyError:
            return None  # the key was used before: this very event went out already
        except stripe.InvalidRequestError as exc:
            if already_sent(exc):
                return None
            return f"stripe {exc.http_status}: {exc.user_message or exc}"[:500]
        except stripe.StripeError as exc:  # connection, 5xx, 429, authentication: retried
            raise SinkUnavailableError(
                f"Stripe meter events: {type(exc).__name__}: {exc.user_message or exc}"
            ) from exc
        return None
