"""The restricted listeners: the authz-only listener (TIERGATE_AUTHZ_HOST) serves the hook and
health, the diagnostics listener (TIERGATE_DIAGNOSTICS_HOST) health, readiness and metrics, on an
address other pods or the kubelet reach, while everything else stays on loopback."""

from __future__ import annotations

from aiohttp import web

from tiergate.sidecar.ingress.hook import AUTHZ_PREFIX
from tiergate.web import error_body, json_response

# Local ports of each listener's sockets (set by sidecar.app.run once they are bound).
AUTHZ_LISTENER_PORTS = web.AppKey("authz_listener_ports", frozenset[int])
DIAGNOSTICS_LISTENER_PORTS = web.AppKey("diagnostics_listener_ports", frozenset[int])
AUTHZ_LISTENER_PATHS = ("/healthz", "/readyz")
DIAGNOSTICS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def listener_refusal(request: web.Request) -> web.Response | None:
    """A 404 for what the listener the request came in on does not serve; None otherwise (always,
    when neither listener is configured: two lookups)."""
    app = request.app
    if AUTHZ_LISTENER_PORTS not in app and DIAGNOSTICS_LISTENER_PORTS not in app:
        return None
    port = _local_port(request)
    path = request.path
    if port in app.get(AUTHZ_LISTENER_PORTS, frozenset()) and not (
        path in AUTHZ_LISTENER_PATHS or path == AUTHZ_PREFIX or path.startswith(AUTHZ_PREFIX + "/")
    ):
        message = f"{path} is not served on the authz listener (only {AUTHZ_PREFIX} and health)"
        return json_response(error_body("not_found", message), 404)
    if port in app.get(DIAGNOSTICS_LISTENER_PORTS, frozenset()) and path not in DIAGNOSTICS_PATHS:
        paths = ", ".join(sorted(DIAGNOSTICS_PATHS))
        message = f"{path} is not served on the diagnostics listener (only {paths})"
        return json_response(error_body("not_found", message), 404)
    return None


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if isinstance(sockname, tuple) else None
