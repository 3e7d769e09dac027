"""POST /webhooks/stripe: verify the signature over the raw bytes -> translate -> apply -> 2xx."""

from __future__ import annotations

import structlog
from aiohttp import web

from tiergate.errors import WebhookRejectedError
from tiergate.sync_daemon.state import APPLIER, BILLING, METRICS
from tiergate.sync_daemon.stripe_sync.translate import HANDLED_EVENTS
from tiergate.web import json_response

log = structlog.get_logger("tiergate.webhook")


async def receive_stripe_event(request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        event = request.app[BILLING].verify_event(raw, request.headers.get("Stripe-Signature"))
        if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
            raise WebhookRejectedError("event lacks an id or a type", field="body")
        created = event.get("created")
        if isinstance(created, bool) or not isinstance(created, int) or not 0 <= created < 2**63:
            raise WebhookRejectedError(f"event created={created!r} is not Unix seconds", field="created")
    except WebhookRejectedError as exc:
        request.app[METRICS].count_webhook("unverified", "rejected")
        # The reason only: never the signature or the payload.
        log.warning("webhook_rejected", reason=exc.message)
        raise
    outcome = await request.app[APPLIER].handle(event)
    # Label by type only for types we handle: arbitrary type strings must not grow the metric.
    label = event["type"] if event["type"] in HANDLED_EVENTS else "other"
    request.app[METRICS].count_webhook(label, outcome)
    log.info(
        "webhook", event_id=event["id"], type=event["type"], created=event.get("created"), outcome=outcome
    )
    return json_response({"received": True, "id": event["id"], "outcome": outcome})
