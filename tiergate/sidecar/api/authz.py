"""/v1/authz over HTTP (NGINX auth_request, Traefik ForwardAuth, Envoy ext_authz) and the gate's
cleanup context (the authz-only listener that serves nothing else: tiergate/sidecar/api/listeners.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from tiergate.sidecar.api.guard import guarded
from tiergate.sidecar.api.usage import RECORDER
from tiergate.sidecar.ingress.gate import IngressGate
from tiergate.sidecar.ingress.hook import AUTHZ_PREFIX, error_verdict, for_auth_request, reserved_headers
from tiergate.sidecar.ingress.identity import HeaderIdentity, JwtIdentity, TenantIdentity
from tiergate.sidecar.ingress.replays import ReplayWindow
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sidecar.state import DECISIONS, METRICS, ROUTES, SETTINGS
from tiergate.web import json_response

GATE = web.AppKey("ingress_gate", IngressGate)


async def authz(request: web.Request) -> web.Response:
    nginx = request.headers.get("X-Tiergate-Proxy", "").lower() == "nginx"
    gate = request.app[GATE]
    forged = reserved_headers(request.headers.keys(), gate.proxy_headers()) if nginx else []
    if forged:
        message = f"client-sent {', '.join(forged)}: X-Tiergate-* names are reserved for tiergate"
        verdict = error_verdict(400, "reserved_header", message, forged[0])
        gate.metrics.authz.labels("400", "reserved_header").inc()
    else:
        verdict = await gate.authorize(request.headers, request.method, request.path)
    if nginx:
        verdict = for_auth_request(verdict)
    if verdict.body is None:
        return web.Response(status=verdict.status, headers=verdict.headers)
    return json_response(verdict.body, verdict.status, verdict.headers)


def make_identity(settings: SidecarSettings) -> TenantIdentity:
    if settings.authz_identity == "jwt":
        return JwtIdentity(
            secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
            jwks_path=settings.jwt_jwks_path,
            tenant_claim=settings.jwt_tenant_claim,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway_s=settings.jwt_leeway_s,
        )
    return HeaderIdentity(settings.tenant_header)


async def ingress_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the engine's and the usage contexts: the gate uses their decisions and recorder."""
    settings = app[SETTINGS]
    recorder = app[RECORDER] if settings.authz_record_usage and RECORDER in app else None
    app[GATE] = IngressGate(
        identity=make_identity(settings),
        routes=app[ROUTES],
        decisions=app[DECISIONS],
        metrics=app[METRICS],
        reserve=recorder.reserve if recorder is not None else None,
        request_id_header=settings.authz_request_id_header,
        replays=ReplayWindow(settings.authz_replay_window_s, settings.authz_replay_max_entries),
    )
    yield


@web.middleware
def add_authz_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(ingress_ctx)
    app.router.add_route("*", AUTHZ_PREFIX, guarded(authz))
    app.router.add_route("*", AUTHZ_PREFIX + "/{tail:.*}", guarded(authz))
