"""The sidecar's HTTP handlers: parse, fetch, decide, render."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from tiergate.errors import BadRequestError, NotFoundError, TierError
from tiergate.models import CheckRequest, Decision
from tiergate.periods import rfc3339, utc_now
from tiergate.policy.document import feature_sources
from tiergate.policy.engine import rule_that_decided
from tiergate.sidecar.api.guard import PROCESS, guarded
from tiergate.sidecar.api.listeners import listener_refusal
from tiergate.sidecar.api.query import check_query
from tiergate.sidecar.api.usage import OUTBOX, check_and_reserve, usage_status
from tiergate.sidecar.replica.follower import FollowerStatus
from tiergate.sidecar.replica.store import AccountRow
from tiergate.sidecar.state import DECISIONS, FOLLOWER, LICENSE, METRICS, POLICIES, READER, SETTINGS
from tiergate.sidecar.usage.static_mode import static_mode_warnings
from tiergate.web import (
    check_headers,
    error_response,
    json_response,
    query_params,
    read_json_object,
    validate,
)

YIELD_EVERY = 32  # decisions between two yields to the event loop inside one batch


class CheckBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checks: list[Any] = Field(min_length=1)


async def check_get(request: web.Request) -> web.StreamResponse:
    """The hot path: what `guarded` does for the other routes is done here, inline (one coroutine
    fewer a request); the decision comes rendered (DecisionService.decide_json)."""
    try:
        refused = listener_refusal(request)
        if refused is not None:
            return refused
        check_headers(request)
        # query_params: a parameter given twice is a 400; check_query: the fields, validated by hand.
        tenant, feature, quantity = check_query(query_params(request))
        body = await request.app[DECISIONS].decide_json(tenant, feature, quantity)
    except Exception as exc:
        return error_response(request, exc, PROCESS)
    return web.Response(body=body, content_type="application/json")


async def check_post(request: web.Request) -> web.Response:
    body = await read_json_object(request, request.app[SETTINGS].max_body_bytes)
    if "reserve" in body:
        return await check_and_reserve(request, body)
    check = validate(CheckRequest, body)
    rendered = await request.app[DECISIONS].decide_json(check.tenant, check.feature, check.quantity)
    return web.Response(body=rendered, content_type="application/json")


async def check_batch(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_json_object(request, settings.max_body_bytes)
    batch = validate(CheckBatch, body)
    if len(batch.checks) > settings.max_batch:
        raise BadRequestError(
            f"batch of {len(batch.checks)} checks exceeds the limit of {settings.max_batch}",
            field="checks",
        )
    checks = [validate(CheckRequest, raw, prefix=f"checks[{i}].") for i, raw in enumerate(batch.checks)]
    decide = request.app[DECISIONS].decide
    decisions = []
    for n, c in enumerate(checks, 1):
        decisions.append(await decide(c.tenant, c.feature, c.quantity))
        if n % YIELD_EVERY == 0:  # a batch of cache misses must not hold every other check back
            await asyncio.sleep(0)
    return json_response({"decisions": decisions})


async def entitlements(request: web.Request) -> web.Response:
    tenant = validate(CheckRequest, {"tenant": request.match_info["tenant"], "feature": "-"}).tenant
    decide = request.app[DECISIONS].decide
    features = request.app[POLICIES].features()
    decisions = {feature: await decide(tenant, feature, 1) for feature in sorted(features)}
    row = request.app[READER].account(tenant)
    addons = json.loads(row.addons) if row is not None and row.addons else {}
    overrides = request.app[READER].overrides(tenant)
    sources = feature_sources(
        overrides, addons, request.app[POLICIES].addon_features(), rfc3339(utc_now()) or ""
    )
    first = next(iter(decisions.values()), None)
    return json_response(
        {
            "tenant": tenant,
            "tier": first.tier if first else None,
            "account": row.to_account().model_dump(mode="json", exclude={"version"}) if row else None,
            # A downgrade scheduled at the period end: the UI can say "Starter from <date>".
            "pending_change": _pending_change(row),
            "features": {
                name: {**_feature_entry(d), "source": sources.get(name, "plan")}
                for name, d in decisions.items()
            },
            "policy_revision": first.policy_revision if first else None,
            "data_as_of": first.data_as_of if first else None,
            "stale": first.stale if first else False,
        }
    )


async def get_decision(request: web.Request) -> web.Response:
    """A recent decision with the input it was made from (every deny, a sample of allows)."""
    decision_id = request.match_info["decision_id"]
    service = request.app[DECISIONS]
    found = service.records.get(decision_id) if service.records is not None else None
    if found is None:
        raise NotFoundError(
            f"decision {decision_id[:100]!r} is not among this sidecar's recent records (every deny and "
            "a sample of allows are kept within TIERGATE_DECISION_RECORD_MB; the daemon keeps denies longer)"
        )
    found["decided_by"] = await rule_that_decided(service.engine, found["input"], found["decision"])
    return json_response(found)


def _feature_entry(decision: Decision) -> dict[str, Any]:
    return {
        "allow": decision.allow,
        "reason": decision.reason,
        "limit": decision.limit,
        "used": decision.used,
        "remaining": decision.remaining,
        "valid_until": decision.valid_until,
        "license_grace_until": decision.license_grace_until,
    }


def _pending_change(row: AccountRow | None) -> dict[str, Any] | None:
    if row is None or row.pending_tier is None:
        return None
    return {"tier": row.pending_tier, "interval": row.pending_interval, "at": row.pending_at}


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    reloader = request.app[POLICIES]
    policy = reloader.status()
    ok: list[str] = []
    failing: dict[str, str] = {}
    if reloader.engine.revision:
        ok.append("policy")
    else:
        failing["policy"] = policy.get("last_error") or "no policy loaded"
    try:
        reader = request.app[READER]
        if FOLLOWER in request.app and reader.meta.data_as_of is None:
            failing["replica"] = "waiting for the first snapshot from the sync daemon"
        else:
            ok.append("replica")
    except Exception as exc:  # any sqlite failure means we cannot answer
        failing["replica"] = str(exc)
    try:
        await reloader.engine.ping()
        ok.append("engine")
    except TierError as exc:
        failing["engine"] = exc.message
    # A bad policy push keeps the last good one serving: it shows here but does not fail readiness.
    warnings = {"policy_reload": policy["last_error"]} if policy.get("last_error") else {}
    damage = request.app[READER].damage
    if damage.active:  # the in-memory index answers while a new file downloads
        warnings["replica_damage"] = (
            f"replica file damaged ({damage.problem}); answering from memory, {damage.state}"
        )
    if FOLLOWER in request.app:
        _follower_readiness(request.app[FOLLOWER].status, failing, warnings, repairing=damage.active)
    if LICENSE in request.app:  # a refused renewal leaves the last good license serving: ready
        warnings.update(request.app[LICENSE].warnings())
    ready = not failing
    body = {"ready": ready, "ok": ok, "failing": failing, "warnings": warnings, "policy": policy}
    return json_response(body, 200 if ready else 503)


def _follower_readiness(
    status: FollowerStatus, failing: dict[str, str], warnings: dict[str, str], *, repairing: bool
) -> None:
    """A replica this pod cannot write is this pod's fault: not ready (unless it is a damaged
    file being replaced while the in-memory index answers, or a full volume: answers still come
    from memory, and the staleness budget bounds their age). A daemon that is away is everyone's:
    failing readiness in every pod at once would be an outage, so it is a warning."""
    if status.failing == "replica" and status.disk_full:
        warnings["disk_full"] = (
            f"the replica's disk is full ({status.last_error}); answering from memory, the replica "
            "ages until space is freed"
        )
    elif status.failing == "replica" and not repairing:
        failing["follower"] = f"cannot update the replica: {status.last_error}"
    elif status.failing == "daemon":
        warnings["follower"] = f"the sync daemon is unreachable: {status.last_error}"


async def metrics(request: web.Request) -> web.Response:
    output = generate_latest(request.app[METRICS].registry)
    return web.Response(body=output, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    reader = request.app[READER]
    decisions = request.app[DECISIONS]
    following = FOLLOWER in request.app
    follower = request.app[FOLLOWER] if following else None
    backlog = request.app[OUTBOX].backlog if OUTBOX in request.app else 0
    license = request.app.get(LICENSE)
    mode = "following" if following else "license" if license else "static"
    warnings = static_mode_warnings(reader.count_accounts(), backlog, licensed=license is not None)
    return json_response(
        {
            "mode": mode,
            "warnings": [] if following else warnings,
            "license": license.as_dict() if license else None,
            "replica": {
                "path": str(reader.path),
                "data_as_of": rfc3339(reader.meta.data_as_of),
                "age_seconds": decisions.replica_age(),
                # Its two parts, following a daemon: since its last answer, and its own lag.
                "contact_age_seconds": follower.seconds_since_contact() if follower else None,
                "daemon_lag_seconds": follower.status.daemon_lag_s if follower else None,
                "position": reader.meta.position,
                "source": reader.meta.source,
                "accounts": reader.count_accounts(),
                "damage": reader.damage.as_dict(),
            },
            "policy": request.app[POLICIES].status(),
            "daemon": request.app[FOLLOWER].status.as_dict() if FOLLOWER in request.app else None,
            "stale": decisions.is_stale(),
            "engine": request.app[SETTINGS].engine,
            "decision_cache": {"entries": len(decisions.cache), "bytes": decisions.cache.bytes},
            "usage": usage_status(request.app),
        }
    )


_OPENAPI = Path(__file__).parents[1] / "openapi.yaml"


async def openapi(request: web.Request) -> web.Response:
    return json_response(load_openapi())


@functools.cache
def load_openapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(_OPENAPI.read_text(encoding="utf-8"))
    return document


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/check", check_get)  # guards itself
    app.router.add_post("/v1/check", guarded(check_post))
    app.router.add_post("/v1/check/batch", guarded(check_batch))
    app.router.add_get("/v1/entitlements/{tenant}", guarded(entitlements))
    app.router.add_get("/v1/decisions/{decision_id}", guarded(get_decision))
    app.router.add_get("/healthz", guarded(healthz))
    app.router.add_get("/readyz", guarded(readyz))
    app.router.add_get("/metrics", guarded(metrics))
    app.router.add_get("/v1/status", guarded(status))
    app.router.add_get("/openapi.json", guarded(openapi))
