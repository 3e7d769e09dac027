"""Usage ingest: POST /v1/usage/batch from sidecars; GET /v1/usage/{tenant}, the event lookup and listing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from tiergate import exact_json
from tiergate.catalog import Catalog
from tiergate.errors import BadRequestError, NotFoundError
from tiergate.sync_daemon.mirror.store import MirrorTxn
from tiergate.sync_daemon.mirror.usage import (
    IngestResult,
    find_event,
    ingest_events,
    list_events,
    number_stored_events,
    tenant_usage,
)
from tiergate.sync_daemon.state import APPLIER, CATALOG, MIRROR, SETTINGS
from tiergate.sync_daemon.usage_query import encode_cursor, parse_query
from tiergate.usage_events import EventError, ValidEvent, parse_event
from tiergate.web import json_response, query_params, require_bearer

log = structlog.get_logger("tiergate.daemon.usage")

MAX_DELIVERY = 1000  # events per POST from a sidecar
METRICS = web.AppKey[dict[str, Any]]("usage_metrics")  # the catalog's metrics, in their policy-data form


def _authorize(request: web.Request) -> None:
    require_bearer(request, request.app[SETTINGS].feed_token.get_secret_value())


async def ingest_batch(request: web.Request) -> web.Response:
    """Count each event once: per-event results, so one bad event cannot block a sidecar's outbox."""
    _authorize(request)
    raw = _events(await request.read())
    now = datetime.now(UTC)
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, ValidEvent]] = []
    metrics = request.app[METRICS]
    for index, item in enumerate(raw):
        try:
            event = parse_event(item, metrics, now)
        except EventError as exc:
            results.append(_rejected(item, f"events[{index}].{exc.field}: {exc.message}"))
            continue
        results.append({"transaction_id": event.transaction_id, "external_customer_id": event.tenant})
        valid.append((index, event))
    events = [event for _, event in valid]
    outbound = request.app[APPLIER].outbound
    catalog = request.app[CATALOG]

    def ingest(txn: MirrorTxn) -> IngestResult:
        result = ingest_events(txn, events, now, catalog)
        if outbound is not None:  # alerts commit with the counters that reach them
            outbound.usage_changed(txn, result.counters)
        return result

    # The seq at commit: every counted event (also one counted earlier, on any daemon) is at or below it.
    outcome, seq = await request.app[MIRROR].transact_seq(ingest)
    for (index, _), inserted in zip(valid, outcome.inserted, strict=True):
        results[index]["status"] = "ingested" if inserted else "duplicate"
    counts = {s: sum(r["status"] == s for r in results) for s in ("ingested", "duplicate", "rejected")}
    log.info("usage_ingested", seq=seq, counters=len(outcome.counters), **counts)
    return json_response({"seq": seq, **counts, "results": results})


def _events(body: bytes) -> list[Any]:
    try:
        value = exact_json.loads(body)  # a decimal value stays exactly what the app sent
    except exact_json.ExactJsonError as exc:
        raise BadRequestError(f"body is not JSON: {exc}", field="body") from exc
    events = value.get("events") if isinstance(value, dict) else None
    if not isinstance(events, list):
        raise BadRequestError('body must be {"events": [...]}', field="events")
    if len(events) > MAX_DELIVERY:
        raise BadRequestError(f"{len(events)} events exceed the limit of {MAX_DELIVERY}", field="events")
    return events


def _rejected(item: object, error: str) -> dict[str, Any]:
    source = item if isinstance(item, dict) else {}
    return {
        "transaction_id": _echoed(source.get("transaction_id")),
        "external_customer_id": _echoed(source.get("external_customer_id")),
        "status": "rejected",
        "error": error,
    }


def _echoed(value: object) -> str | None:
    """An identifier of a rejected event as text (a number of any size too), so the answer can
    always be rendered; anything else is left out."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


async def get_tenant_usage(request: web.Request) -> web.Response:
    _authorize(request)
    tenant = request.match_info["tenant"]
    now = datetime.now(UTC)
    return json_response(await request.app[MIRROR].read(lambda conn: tenant_usage(conn, tenant, now)))


async def get_event(request: web.Request) -> web.Response:
    _authorize(request)
    transaction_id = request.match_info["transaction_id"]
    tenant = query_params(request).get("external_customer_id")
    await request.app[MIRROR].transact(number_stored_events)  # an event committed just now has its seq
    event = await request.app[MIRROR].read(lambda conn: find_event(conn, transaction_id, tenant))
    if event is None:
        raise NotFoundError(f"no usage event with transaction_id {transaction_id!r} has been ingested")
    return json_response({"event": event})


async def get_events(request: web.Request) -> web.Response:
    """Stored events in ingest order, paged like Lago's list: `next_cursor` until the last page."""
    _authorize(request)
    query = parse_query(query_params(request))
    # Committed events get their seqs first (ADR 21): a page never passes one that commits later.
    await request.app[MIRROR].transact(number_stored_events)
    page, after = await request.app[MIRROR].read(lambda conn: list_events(conn, query))
    return json_response({"events": page, "next_cursor": encode_cursor(after) if after is not None else None})


def add_usage_routes(app: web.Application, catalog: Catalog) -> None:
    app[METRICS] = dict(catalog.policy_data().get("metrics", {}))
    app.router.add_post("/v1/usage/batch", ingest_batch)
    app.router.add_get("/v1/usage/events", get_events)  # before /v1/usage/{tenant}, which it would match
    app.router.add_get("/v1/usage/events/{transaction_id}", get_event)
    app.router.add_get("/v1/usage/{tenant}", get_tenant_usage)
