"""The daemon's request spans, while tracing is on: one server span per request, a child of the
caller's `traceparent` (a sidecar's usage delivery sends one), so a usage event's trace runs
app -> sidecar -> daemon; a Stripe webhook's span holds the mirror change it applies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from tiergate.tracing import TRACEPARENT, Tracing

log = structlog.get_logger("tiergate.daemon")

TRACING = web.AppKey("tracing", Tracing)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def span_name(request: web.Request) -> str:
    """`POST /v1/usage/batch`: the route's pattern, never the raw path (tenant ids stay out)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else 'unrouted'}"


def tracing_middleware(tracing: Tracing) -> Middleware:
    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = span_name(request)
        parent = request.headers.get(TRACEPARENT)
        with tracing.span(name, parent=parent, kind="server", attributes={"http.route": name}):
            response = await handler(request)
            return response

    return traced


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    log.info("tracing_on", traces_url=app[TRACING].traces_url)
    yield
    await asyncio.to_thread(app[TRACING].shutdown)  # exports the last spans
