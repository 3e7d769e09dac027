"""The sidecar's routes run without aiohttp middlewares: a middleware adds a coroutine layer to
every request, the hot GET /v1/check included. Each handler is registered `guarded` instead (the
listener restrictions, the header check and the JSON error shape that `tiergate.web.error_middleware`
gives the daemon); GET /v1/check does the same inline. `unrouted`, the last route, answers what no
route takes with the JSON 404 or 405 the middleware used to give."""

from __future__ import annotations

import functools

from aiohttp import web

from tiergate.sidecar.api.listeners import listener_refusal
from tiergate.web import Handler, check_headers, error_response

PROCESS = "sidecar"
UNROUTED = "/{unrouted:.*}"


def guarded(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            refused = listener_refusal(request)
            if refused is not None:
                return refused
            check_headers(request)
            return await handler(request)
        except Exception as exc:
            return error_response(request, exc, PROCESS)

    return run


async def unrouted(request: web.Request) -> web.StreamResponse:
    """No route takes this request: a 405 naming the methods when the path has routes, else 404."""
    allowed: set[str] = set()
    this = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not this:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound()


def add_unrouted(app: web.Application) -> None:
    """Call after every other route: the router tries this one last."""
    app.router.add_route("*", UNROUTED, guarded(unrouted))
