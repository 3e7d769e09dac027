"""The benchmark's baseline: a bare aiohttp app answering the sidecar's paths with a fixed body.

It does no work at all (no parsing, no lookup, no policy), so the sidecar's figures divided by
this one's are the cost of tiergate itself on top of aiohttp on this machine.

    .venv/bin/python bench/baseline_server.py --port 9292
"""

from __future__ import annotations

import argparse

from aiohttp import web

BODY = b'{"allow":true,"reason":"ok","tier":"pro","limit":null,"used":0,"remaining":null}'


async def fixed(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/check", fixed)
    app.router.add_post("/v1/check/batch", fixed)
    app.router.add_route("*", "/v1/authz", fixed)
    app.router.add_get("/healthz", fixed)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
