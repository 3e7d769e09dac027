"""Per-tenant overrides and grants: `/v1/tenants/{tenant}/overrides[/{feature}]` (bearer TIERGATE_API_TOKEN).

Support gives one customer 5M API calls; sales gives a 14-day trial of SSO. Each change is stored
in the mirror with an audit row and a change-log entry in one transaction, so every sidecar
sees it through the feed; the shipped policy applies an override until its `expires_at`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from tiergate.catalog import Catalog, FeatureValue
from tiergate.errors import BadRequestError, NotFoundError
from tiergate.sync_daemon.billing.auth import authorize, parse_body, path_tenant
from tiergate.sync_daemon.mirror.overrides import (
    Override,
    remove_override,
    set_override,
    tenant_audit,
    tenant_overrides,
)
from tiergate.sync_daemon.state import CATALOG, MIRROR
from tiergate.web import json_response

log = structlog.get_logger("tiergate.overrides")

AUDIT_SHOWN = 50
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Actor = Annotated[str, Field(min_length=1, max_length=200)]


class OverrideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: FeatureValue
    expires_at: AwareDatetime | None = None
    reason: Reason
    actor: Actor | None = None  # who asked (a support agent's name): kept in the audit trail


def path_feature(request: web.Request, catalog: Catalog) -> str:
    feature = request.match_info["feature"].strip()
    if feature not in catalog.features:
        raise BadRequestError(
            f"feature {feature!r} is in no tier's features (known: {sorted(catalog.features)})",
            field="feature",
        )
    return feature


async def put_override(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    feature = path_feature(request, request.app[CATALOG])
    body = await parse_body(request, OverrideRequest)
    now = datetime.now(UTC)
    if body.expires_at is not None and body.expires_at <= now:
        raise BadRequestError(
            f"expires_at {body.expires_at.isoformat()} is not in the future (now {now.isoformat(timespec='seconds')})",
            field="expires_at",
        )
    wanted = Override(tenant, feature, body.value, body.expires_at, body.reason, body.actor)
    stored = await request.app[MIRROR].transact(lambda txn: set_override(txn, wanted))
    log.info(
        "override_set", tenant=tenant, feature=feature, expires_at=str(body.expires_at), actor=body.actor
    )
    return json_response(stored.render(now))


async def delete_override(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    feature = path_feature(request, request.app[CATALOG])
    reason = request.query.get("reason", "removed")[:500]
    actor = request.query.get("actor", "")[:200] or None
    removed = await request.app[MIRROR].transact(
        lambda txn: remove_override(txn, tenant, feature, reason, actor)
    )
    if not removed:
        raise NotFoundError(f"tenant {tenant!r} has no override for {feature!r}")
    log.info("override_removed", tenant=tenant, feature=feature, actor=actor)
    return json_response({"tenant": tenant, "feature": feature, "removed": True})


async def get_override(request: web.Request) -> web.Response:
    authorize(request)
    tenant = path_tenant(request)
    feature = path_feature(request, request.app[CATALOG])
    found = [o for o in await _overrides(request, tenant) if o.feature == feature]
    if not found:
        raise NotFoundError(f"tenant {tenant!r} has no override for {feature!r}")
    return json_response(found[0].render(datetime.now(UTC)))


async def list_overrides(request: web.Request) -> web.Response:
    """The tenant's overrides (expired ones too, marked `active: false`) and its newest audit entries."""
    authorize(request)
    tenant = path_tenant(request)
    now = datetime.now(UTC)
    overrides = await _overrides(request, tenant)
    audit = await request.app[MIRROR].read(lambda conn: tenant_audit(conn, tenant, AUDIT_SHOWN))
    body: dict[str, Any] = {"tenant": tenant, "overrides": [o.render(now) for o in overrides], "audit": audit}
    return json_response(body)


async def _overrides(request: web.Request, tenant: str) -> list[Override]:
    return await request.app[MIRROR].read(lambda conn: tenant_overrides(conn, tenant))


def add_override_routes(app: web.Application) -> None:
    app.router.add_get("/v1/tenants/{tenant}/overrides", list_overrides)
    app.router.add_get("/v1/tenants/{tenant}/overrides/{feature}", get_override)
    app.router.add_put("/v1/tenants/{tenant}/overrides/{feature}", put_override)
    app.router.add_delete("/v1/tenants/{tenant}/overrides/{feature}", delete_override)
