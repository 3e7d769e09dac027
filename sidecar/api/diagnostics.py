"""The diagnostics listener: health, readiness and metrics only, on an address the kubelet and
Prometheus can reach (e.g. the pod IP), while everything else stays on loopback."""

from __future__ import annotations

from aiohttp import web

from tiergate.web import Handler, error_body, json_response

DIAGNOSTICS_LISTENER_PORTS = web.AppKey("diagnostics_listener_ports", frozenset[int])
DIAGNOSTICS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def diagnostics_listener_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    ports = request.app.get(DIAGNOSTICS_LISTENER_PORTS, frozenset())
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and sockname[1] in ports and request.path not in DIAGNOSTICS_PATHS:
        paths = ", ".join(sorted(DIAGNOSTICS_PATHS))
        message = f"{request.path} is not served on the diagnostics listener (only {paths})"
        return json_response(error_body("not_found", message), 404)
    return await handler(request)
