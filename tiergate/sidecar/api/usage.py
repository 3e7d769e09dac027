"""POST /v1/usage and /v1/usage/batch, check-and-reserve, and the usage cleanup context."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tiergate.errors import BadRequestError, EngineUnavailableError
from tiergate.models import FeatureName, Quantity, TenantId
from tiergate.policy.engine import PolicyBundle
from tiergate.sidecar.api.guard import guarded
from tiergate.sidecar.api.holds import HOLDS, add_hold_routes
from tiergate.sidecar.api.reserve_body import reserve_body
from tiergate.sidecar.leases.client import HttpLeaseClient
from tiergate.sidecar.leases.holder import Leases
from tiergate.sidecar.leases.metrics import LeaseMetrics
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sidecar.state import DECISIONS, METRICS, POLICIES, READER, SETTINGS, TRACING
from tiergate.sidecar.usage.delivery import Delivery
from tiergate.sidecar.usage.holds import Holds
from tiergate.sidecar.usage.outbox import Outbox
from tiergate.sidecar.usage.recorder import UsageRecorder, reserved_body
from tiergate.sidecar.usage.static_mode import UndeliveredUsage, static_mode_warnings
from tiergate.tracing import TRACEPARENT
from tiergate.usage_events import MAX_EVENTS
from tiergate.web import json_response, read_json_object, validate

log = structlog.get_logger("tiergate.sidecar")

RECORDER = web.AppKey("usage_recorder", UsageRecorder)
OUTBOX = web.AppKey("usage_outbox", Outbox)
DELIVERY = web.AppKey("usage_delivery", Delivery)
LEASES = web.AppKey("quota_leases", Leases)


class OneEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: dict[str, Any]


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[Any], Field(min_length=1, max_length=MAX_EVENTS)]


class ReserveRequest(BaseModel):
    """POST /v1/check with `"reserve": true`: a check that records the quantity when allowed (the
    rules; requests are validated by `reserve_body`, held to this model by a unit test)."""

    model_config = ConfigDict(extra="forbid")

    tenant: TenantId
    feature: FeatureName
    quantity: Quantity = 1
    reserve: Annotated[bool, Field(strict=True)]
    transaction_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


async def record_one(request: web.Request) -> web.Response:
    body = validate(
        OneEvent, await read_json_object(request, request.app[SETTINGS].max_body_bytes, exact=True)
    )
    results = await _record(request, [body.event], "event")
    return json_response({"event": results[0]}, 202)


async def record_batch(request: web.Request) -> web.Response:
    body = validate(
        EventBatch, await read_json_object(request, request.app[SETTINGS].max_body_bytes, exact=True)
    )
    results = await _record(request, body.events, "events[{}]")
    return json_response({"events": results}, 202)


async def _record(request: web.Request, raws: list[Any], where: str) -> list[dict[str, Any]]:
    """Record; with tracing on, in a span under the caller's `traceparent`, which the accepted
    events carry on to the daemon when delivered."""
    if TRACING not in request.app:
        return await request.app[RECORDER].record(raws, where)
    parent = request.headers.get(TRACEPARENT)
    with request.app[TRACING].span("usage.record", parent=parent, kind="server") as traceparent:
        results = await request.app[RECORDER].record(raws, where)
    if DELIVERY in request.app:
        accepted = [
            (r["external_customer_id"], r["transaction_id"]) for r in results if r["status"] == "accepted"
        ]
        request.app[DELIVERY].traces.remember(accepted, traceparent)
    return results


async def check_and_reserve(request: web.Request, body: dict[str, Any]) -> web.Response:
    """Called by POST /v1/check when the body has `"reserve"` (false is a plain check)."""
    check = reserve_body(body)  # ReserveRequest's rules, by hand (tiergate/sidecar/api/reserve_body.py)
    if not check.reserve:
        rendered = await request.app[DECISIONS].decide_json(check.tenant, check.feature, check.quantity)
        return web.Response(body=rendered, content_type="application/json")
    recorder = request.app[RECORDER]
    decision, reservation = await recorder.reserve(
        check.tenant, check.feature, check.quantity, check.transaction_id
    )
    return json_response(reserved_body(decision, reservation))


def usage_status(app: web.Application) -> dict[str, Any] | None:
    if OUTBOX not in app:
        return None
    outbox = app[OUTBOX]
    return {
        "outbox": str(outbox.path),
        "backlog": outbox.backlog,
        "oldest_undelivered_age_s": round(outbox.oldest_age(), 3),
        "quarantined": outbox.quarantined,
        "sync": outbox.sync,
        # synchronous=normal: appends that found the write lock taken and waited on the thread
        "commits_deferred": outbox.loop_commits_deferred,
        "pending": app[RECORDER].ledger.stats(),
        "holds": app[HOLDS].status() if HOLDS in app else None,
        "delivery": app[DELIVERY].status.as_dict() if DELIVERY in app else None,
        "leases": app[LEASES].status() if LEASES in app else None,
    }


class Redelivery(BaseModel):
    """POST /v1/usage/quarantine/redeliver: the quarantined rows to put back in line."""

    model_config = ConfigDict(extra="forbid")

    ids: Annotated[list[Annotated[int, Field(strict=True, ge=1)]], Field(max_length=10_000)] | None = None
    all: Annotated[bool, Field(strict=True)] = False


async def list_quarantine(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "100")
    limit = int(raw) if raw.isdigit() else -1
    if not 1 <= limit <= 10_000:
        raise BadRequestError(f"limit: {raw!r} is not an integer between 1 and 10000", field="limit")
    outbox = request.app[OUTBOX]
    events = await outbox.list_quarantined(limit)
    return json_response({"quarantined": outbox.quarantined, "events": events})


async def redeliver_quarantine(request: web.Request) -> web.Response:
    body = validate(Redelivery, await read_json_object(request, request.app[SETTINGS].max_body_bytes))
    if body.all == (body.ids is not None):
        raise BadRequestError('give either "ids": [...] or "all": true', field="ids")
    released = await request.app[OUTBOX].redeliver(None if body.all else body.ids)
    log.info("usage_quarantine_released", events=released)
    return json_response({"redelivered": released, "quarantined": request.app[OUTBOX].quarantined})


def outbox_path(settings: SidecarSettings) -> Path:
    return settings.outbox_path or settings.replica_path.with_name("outbox.db")


async def usage_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the engine context: the outbox (feeding the decisions' usage ledger), and delivery."""
    settings, decisions, reader = app[SETTINGS], app[DECISIONS], app[READER]
    ledger = decisions.ledger
    outbox = Outbox(
        outbox_path(settings),
        ledger,
        time.time,
        sync=settings.outbox_sync,
        reservation_id_retention_s=settings.outbox_reservation_id_retention_s,
    )
    await outbox.open(reader.meta.position)
    app[METRICS].watch_outbox(outbox)
    app[OUTBOX] = outbox
    app[RECORDER] = UsageRecorder(outbox, ledger, decisions, reader, lambda: _bundle(app))
    holds = Holds(outbox, app[RECORDER], retention_s=settings.outbox_reservation_id_retention_s)
    await holds.open()  # its active holds counted again, before any request is answered
    app[HOLDS] = holds
    app[METRICS].watch_holds(holds)
    if settings.daemon_url is not None:
        delivery = Delivery(
            outbox,
            ledger,
            daemon_url=str(settings.daemon_url),
            token=settings.sent_feed_token,
            position=lambda: reader.meta.position,
            batch_size=settings.delivery_batch_size,
            max_bytes=settings.delivery_max_bytes,
            linger_s=settings.delivery_linger_s,
            backoff_max_s=settings.delivery_backoff_max_s,
            retention_s=settings.outbox_retention_s,
            tracing=app.get(TRACING),
            records=decisions.records,
        )
        app[DELIVERY] = delivery
        delivery.start()
        leases = app[LEASES] = Leases(
            HttpLeaseClient(str(settings.daemon_url), settings.sent_feed_token),
            wait_s=settings.lease_wait_ms / 1000,
            wall=lambda: decisions.clock(),  # the clock usage events are stamped with
        )
        app[RECORDER].leases = leases
        delivery.on_answered = leases.delivered
        app[METRICS].registry.register(LeaseMetrics(leases))
        leases.start()
    elif settings.license_path is not None:  # usage stays here by design: `tiergate usage export`
        for line in static_mode_warnings(reader.count_accounts(), outbox.backlog, licensed=True):
            log.info("license_mode", note=line)
    else:
        app[RECORDER].on_backlog = UndeliveredUsage(str(outbox.path))
        for warning in static_mode_warnings(reader.count_accounts(), outbox.backlog):
            log.warning("static_mode", warning=warning)
    try:
        yield
    finally:
        await holds.close()
        if LEASES in app:
            await app[LEASES].close()
            await app[LEASES].client.close()
        if DELIVERY in app:
            await app[DELIVERY].stop()
        await outbox.close()


def _bundle(app: web.Application) -> PolicyBundle:
    bundle = app[POLICIES].reloader.bundle
    if bundle is None:
        raise EngineUnavailableError("no catalog loaded yet: usage codes cannot be checked")
    return bundle


def add_usage_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(usage_ctx)
    app.router.add_post("/v1/usage", guarded(record_one))
    app.router.add_post("/v1/usage/batch", guarded(record_batch))
    app.router.add_get("/v1/usage/quarantine", guarded(list_quarantine))
    app.router.add_post("/v1/usage/quarantine/redeliver", guarded(redeliver_quarantine))
    add_hold_routes(app)
