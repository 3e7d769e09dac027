"""POST /webhooks/stripe: verify the signature over the raw bytes -> check the shape -> translate ->
apply -> 2xx. A refused event is a 400 naming the field, counted by reason and logged; nothing of
it is stored. An event whose tenant id breaks the rule is recorded as `invalid_tenant` (a 200:
Stripe's retries would not change it) and reported in the answer."""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from tiergate.errors import InvalidTenantError, WebhookRejectedError
from tiergate.sync_daemon.state import APPLIER, BILLING, METRICS, SETTINGS
from tiergate.sync_daemon.stripe_sync.translate import HANDLED_EVENTS
from tiergate.web import json_response

log = structlog.get_logger("tiergate.webhook")


class RefusedEvent(WebhookRejectedError):
    """A WebhookRejectedError with the reason it is counted under (tiergate_webhooks_refused_total)."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.reason = reason


def check_event(event: dict[str, Any], now: float, future_tolerance_s: float) -> None:
    """The envelope every event must have: an id, a type, and `created` in Unix seconds that is
    not ahead of `now` by more than the tolerance (an event dated ahead would make every later
    real event of its tenant `stale`)."""
    if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        raise RefusedEvent("shape", "event lacks an id or a type", field="body")
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, int) or not 0 <= created < 2**63:
        raise RefusedEvent("created", f"event created={created!r} is not Unix seconds", field="created")
    if created > now + future_tolerance_s:
        raise RefusedEvent(
            "future",
            f"event created={created} is {created - now:.0f} s ahead of this daemon's clock (more than "
            f"TIERGATE_WEBHOOK_FUTURE_TOLERANCE_S={future_tolerance_s:g}); check the clocks",
            field="created",
        )


async def receive_stripe_event(request: web.Request) -> web.Response:
    raw = await request.read()
    metrics = request.app[METRICS]
    try:
        try:
            event = request.app[BILLING].verify_event(raw, request.headers.get("Stripe-Signature"))
        except WebhookRejectedError as exc:
            raise RefusedEvent("signature", exc.message, exc.field) from None
        check_event(event, time.time(), request.app[SETTINGS].webhook_future_tolerance_s)
        outcome, error = await _apply(request, event)
    except WebhookRejectedError as exc:
        reason = exc.reason if isinstance(exc, RefusedEvent) else "field"
        metrics.count_webhook("unverified" if reason == "signature" else "refused", "rejected")
        metrics.webhooks_refused.labels(reason).inc()
        # The reason only: never the signature or the payload.
        log.warning("webhook_rejected", reason=exc.message, reason_code=reason, field=exc.field)
        raise
    # Label by type only for types we handle: arbitrary type strings must not grow the metric.
    label = event["type"] if event["type"] in HANDLED_EVENTS else "other"
    metrics.count_webhook(label, outcome)
    log.info(
        "webhook", event_id=event["id"], type=event["type"], created=event.get("created"), outcome=outcome
    )
    body: dict[str, Any] = {"received": True, "id": event["id"], "outcome": outcome}
    if error is not None:
        body |= error.to_json()
    return json_response(body)


async def _apply(request: web.Request, event: dict[str, Any]) -> tuple[str, InvalidTenantError | None]:
    applier = request.app[APPLIER]
    try:
        return await applier.handle(event), None
    except InvalidTenantError as exc:
        log.warning(
            "invalid_tenant", event_id=event["id"], type=event["type"], field=exc.field, reason=exc.message
        )
        return await applier.record(event, "invalid_tenant"), exc
