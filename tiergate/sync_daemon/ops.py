"""Operations routes: /healthz (alive), /readyz (mirror usable; reconcile state), /metrics, /v1/status,
and /openapi.json."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tiergate.sync_daemon.leases.api import lease_totals
from tiergate.sync_daemon.sinks.service import sinks_status
from tiergate.sync_daemon.state import LEADER, METRICS, MIRROR, RECONCILER, SETTINGS
from tiergate.web import json_response, require_bearer


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ok: list[str] = []
    failing: dict[str, str] = {}
    try:
        await request.app[MIRROR].ping()
        ok.append("mirror")
    except Exception as exc:  # any failure here is the answer (503 with the reason), not a 500
        failing["mirror"] = f"{type(exc).__name__}: {exc}"
    last = request.app[RECONCILER].last
    if last is not None and last.ok:
        ok.append("reconcile")
    elif last is not None:
        # Stripe being away does not stop webhook intake or the feed: reported, still ready.
        failing["reconcile"] = last.error or "failed"
    ready = "mirror" in ok
    return json_response({"ready": ready, "ok": ok, "failing": failing}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    require_bearer(request, request.app[SETTINGS].feed_token.get_secret_value())
    last = request.app[RECONCILER].last
    return json_response(
        {
            "webhooks": request.app[METRICS].webhook_summary(),
            "reconcile": last.as_dict() if last else None,
            "feed": {
                "seq": request.app[MIRROR].seq,
                "mirror_lag_s": request.app[RECONCILER].lag.seconds(),
                "unnumbered": request.app[MIRROR].backlog.as_dict(),
            },
            "mirror": {"backend": request.app[MIRROR].backend, "where": request.app[MIRROR].where},
            "leader": request.app[LEADER].status(),
            "sinks": sinks_status(request.app),
            "leases": await lease_totals(request.app),
        }
    )


def add_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/openapi.json", openapi)


_OPENAPI = Path(__file__).with_name("openapi.yaml")


@functools.cache
def load_openapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(_OPENAPI.read_text(encoding="utf-8"))
    return document


async def openapi(request: web.Request) -> web.Response:
    return json_response(load_openapi())
