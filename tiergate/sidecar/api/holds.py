"""POST /v1/holds, GET|DELETE /v1/holds/{hold_id}, POST /v1/holds/{hold_id}/settle|extend."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tiergate.errors import BadRequestError
from tiergate.models import MAX_QUANTITY, FeatureName, Quantity, TenantId
from tiergate.sidecar.api.guard import guarded
from tiergate.sidecar.state import SETTINGS
from tiergate.sidecar.usage.hold_store import Hold
from tiergate.sidecar.usage.holds import DEFAULT_TTL_S, MAX_TTL_S, Holds, Overage
from tiergate.web import json_response, read_json_object, validate

HOLDS = web.AppKey("holds", Holds)
MAX_HOLD_ID_LENGTH = 64
TtlSeconds = Annotated[int, Field(strict=True, ge=1, le=MAX_TTL_S)]


class HoldRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: TenantId
    feature: FeatureName
    quantity: Quantity = 1
    ttl_s: TtlSeconds = DEFAULT_TTL_S
    transaction_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class SettleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: Annotated[int, Field(strict=True, ge=0, le=MAX_QUANTITY)]
    overage: Overage = "reject"


class ExtendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: TtlSeconds


def _hold_body(hold: Hold, replayed: bool) -> dict[str, Any]:
    return {**hold.body(), "replayed": replayed}


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request, request.app[SETTINGS].max_body_bytes)


def _hold_id(request: web.Request) -> str:
    hold_id = request.match_info["hold_id"]
    if len(hold_id) > MAX_HOLD_ID_LENGTH:
        raise BadRequestError(f"hold_id: longer than {MAX_HOLD_ID_LENGTH} characters", field="hold_id")
    return hold_id


async def create_hold(request: web.Request) -> web.Response:
    """201 with the hold and the decision; the deny decision (200, `hold_id` null) holds nothing."""
    body = validate(HoldRequest, await _body(request))
    decision, hold, replayed = await request.app[HOLDS].create(
        body.tenant, body.feature, body.quantity, body.ttl_s, body.transaction_id
    )
    if hold is None:
        return json_response({**decision.body(), "hold_id": None})
    return json_response({**decision.body(), **_hold_body(hold, replayed)}, 200 if replayed else 201)


async def show_hold(request: web.Request) -> web.Response:
    hold = await request.app[HOLDS].find(_hold_id(request))
    return json_response(_hold_body(hold, False))


async def settle_hold(request: web.Request) -> web.Response:
    hold_id = _hold_id(request)
    body = validate(SettleRequest, await _body(request))
    hold, replayed = await request.app[HOLDS].settle(hold_id, body.quantity, body.overage)
    return json_response(_hold_body(hold, replayed))


async def extend_hold(request: web.Request) -> web.Response:
    hold_id = _hold_id(request)
    body = validate(ExtendRequest, await _body(request))
    hold = await request.app[HOLDS].extend(hold_id, body.ttl_s)
    return json_response(_hold_body(hold, False))


async def release_hold(request: web.Request) -> web.Response:
    hold, replayed = await request.app[HOLDS].release(_hold_id(request))
    return json_response(_hold_body(hold, replayed))


def add_hold_routes(app: web.Application) -> None:
    app.router.add_post("/v1/holds", guarded(create_hold))
    app.router.add_get("/v1/holds/{hold_id}", guarded(show_hold))
    app.router.add_delete("/v1/holds/{hold_id}", guarded(release_hold))
    app.router.add_post("/v1/holds/{hold_id}/settle", guarded(settle_hold))
    app.router.add_post("/v1/holds/{hold_id}/extend", guarded(extend_hold))
