"""The benchmark's baseline: a bare aiohttp JSON handler for each of the sidecar's paths.

Each handler does what any JSON endpoint must and nothing tiergate does: it reads its input
(the query, the JSON body, the proxy's headers) and answers JSON of the same shape as a
decision, with the standard library's json via `web.json_response`. No lookup, no policy, no
cache, no metrics, no logging. The sidecar's figures divided by this one's are the cost of
tiergate itself on top of aiohttp on this machine.

    .venv/bin/python bench/baseline_server.py --port 9292
"""

from __future__ import annotations

import argparse
from typing import Any

import uvloop
from aiohttp import web


def answer(tenant: object, feature: object, quantity: object = 1) -> dict[str, Any]:
    return {
        "allow": True,
        "reason": "ok",
        "tier": "pro",
        "limit": None,
        "used": 0,
        "remaining": None,
        "valid_until": None,
        "tenant": tenant,
        "feature": feature,
        "quantity": quantity,
        "decision_id": "baseline",
        "policy_revision": "baseline",
        "data_as_of": None,
        "stale": False,
    }


async def check(request: web.Request) -> web.Response:
    query = request.query
    return web.json_response(answer(query.get("tenant"), query.get("feature"), query.get("quantity", 1)))


async def check_post(request: web.Request) -> web.Response:
    body = await request.json()
    body = body if isinstance(body, dict) else {}
    return web.json_response(answer(body.get("tenant"), body.get("feature"), body.get("quantity", 1)))


async def batch(request: web.Request) -> web.Response:
    body = await request.json()
    checks = body.get("checks", []) if isinstance(body, dict) else []
    return web.json_response({"decisions": [answer(c.get("tenant"), c.get("feature")) for c in checks]})


async def authz(request: web.Request) -> web.Response:
    tenant = request.headers.get("X-Tenant-Id")
    uri = request.headers.get("X-Original-URI", request.path)
    headers = {"X-Tiergate-Tier": "pro", "X-Tiergate-Remaining": "unlimited", "X-Uri": uri}
    return web.Response(status=200 if tenant else 401, headers=headers)


async def usage(request: web.Request) -> web.Response:
    body = await request.json()
    event = body.get("event", {}) if isinstance(body, dict) else {}
    return web.json_response({"accepted": 1, "transaction_id": event.get("transaction_id")}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/check", check)
    app.router.add_post("/v1/check", check_post)
    app.router.add_post("/v1/check/batch", batch)
    app.router.add_route("*", "/v1/authz", authz)
    app.router.add_post("/v1/usage", usage)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="asyncio",
        help="the sidecar's event loop, to compare like with like",
    )
    args = parser.parse_args()
    loop = uvloop.new_event_loop() if args.loop == "uvloop" else None
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
