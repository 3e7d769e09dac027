"""An aiohttp middleware that lets a request reach a handler only if its tenant may use the feature.

routes = web.RouteTableDef()

@routes.get("/reports")
@requires("reports")
async def reports(request: web.Request) -> web.Response: ...

app = web.Application(middlewares=[feature_gate(client)])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from tiergate.client.aio import AsyncTiergateClient
from tiergate.client.gate import DECISION_KEY, Denial, denial, no_tenant
from tiergate.models import Decision

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])
FEATURE_ATTR = "__tiergate_feature__"
# The allowed decision, for the handler: `request[DECISION]`.
DECISION = web.RequestKey(DECISION_KEY, Decision)


def requires(feature: str, quantity: int = 1) -> Callable[[H], H]:
    """Mark a handler as needing `feature` (`quantity` units of it) for the request's tenant."""

    def mark(handler: H) -> H:
        setattr(handler, FEATURE_ATTR, (feature, quantity))
        return handler

    return mark


def feature_gate(client: AsyncTiergateClient, *, tenant_header: str = "X-Tenant-Id") -> Middleware:
    """The middleware: handlers marked with `requires` are checked; others pass untouched. The
    tenant comes from a header your own authentication sets (never one a caller may forge)."""

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed: tuple[str, int] | None = getattr(handler, FEATURE_ATTR, None)
        if needed is None:
            return await handler(request)
        tenant = request.headers.get(tenant_header, "").strip()
        if not tenant:
            return _render(no_tenant(tenant_header))
        decision = await client.check(tenant, *needed)
        refused = denial(decision)
        if refused is not None:
            return _render(refused)
        request[DECISION] = decision
        return await handler(request)

    return gate


def _render(refused: Denial) -> web.Response:
    return web.json_response(refused.body, status=refused.status, headers=refused.headers)
