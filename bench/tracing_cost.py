"""What OpenTelemetry tracing costs a check and a usage record (prints ratios; asserts nothing).

    .venv/bin/python bench/tracing_cost.py            # 6 rounds of 1,500 requests per variant
    .venv/bin/python bench/tracing_cost.py --quick    # 2 rounds of 300

Three sidecars in this process, each on its own loopback port, on one empty replica (static mode):
`without` has the tracing wiring cut out (tracing_for replaced: a build without it), `off` is the
default (no OTLP endpoint), `on` exports every span to an OTLP/HTTP sink on loopback. The variants
run in alternation (A, B, C, C, B, A, ...) so the machine's moods hit each alike; each round's
wall time per request is divided by `without`'s in the same round, and the medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import statistics
import tempfile
import time
import unittest.mock
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

import tiergate.sidecar.app as sidecar_app
from tiergate.sidecar.settings import SidecarSettings

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("without", "off", "on")


async def otlp_sink() -> TestServer:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", accept)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def settings(tmp: Path, name: str, endpoint: str | None) -> SidecarSettings:
    (tmp / name).mkdir()
    values: dict[str, Any] = {
        "replica_path": tmp / name / "replica.db",
        "plans": tmp / "plans.yaml",
        "policies": tmp / "policies",
        "decision_log_sample": 0.0,
        "log_level": "error",
        "outbox_sync": "normal",  # no fsync per record: the disk would drown what is measured
        "otel_exporter_otlp_endpoint": endpoint,
    }
    return SidecarSettings(**values)


async def start(tmp: Path, name: str, endpoint: str | None) -> TestServer:
    with contextlib.ExitStack() as stack:
        if name == "without":  # the build without tracing: its wiring cut out of create_app
            stack.enter_context(unittest.mock.patch.object(sidecar_app, "tracing_for", lambda *_: None))
        server = TestServer(sidecar_app.create_app(settings(tmp, name, endpoint)), host="127.0.0.1")
        await server.start_server()
    return server


Request = Callable[[aiohttp.ClientSession, str, int], Awaitable[None]]


async def check(session: aiohttp.ClientSession, base: str, i: int) -> None:
    async with session.get(f"{base}/v1/check?tenant=t_{i % 500}&feature=api_calls") as response:
        await response.read()


async def record(session: aiohttp.ClientSession, base: str, i: int) -> None:
    event = {"transaction_id": uuid.uuid4().hex, "external_customer_id": f"t_{i % 500}", "code": "api_calls"}
    headers = {"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"}
    async with session.post(f"{base}/v1/usage", json={"event": event}, headers=headers) as response:
        await response.read()


async def round_time(session: aiohttp.ClientSession, base: str, request: Request, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await request(session, base, i)
    return (time.perf_counter() - started) / n


async def measure(servers: dict[str, TestServer], request: Request, rounds: int, n: int) -> dict[str, float]:
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    async with aiohttp.ClientSession() as session:
        for server in servers.values():  # warm each up
            await round_time(session, str(server.make_url("")).rstrip("/"), request, n // 5)
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            times = {
                name: await round_time(session, str(servers[name].make_url("")).rstrip("/"), request, n)
                for name in order
            }
            for name in VARIANTS:
                ratios[name].append(times[name] / times["without"])
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v * 1e6:.0f} µs" for k, v in times.items()))
    return {name: statistics.median(values) for name, values in ratios.items()}


async def main(rounds: int, n: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    sink = await otlp_sink()
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        shutil.copytree(REPO / "policies", tmp / "policies")
        shutil.copy(REPO / "plans" / "plans.yaml", tmp / "plans.yaml")
        endpoint = str(sink.make_url("")).rstrip("/")
        servers = {name: await start(tmp, name, endpoint if name == "on" else None) for name in VARIANTS}
        try:
            for label, request in (("GET /v1/check", check), ("POST /v1/usage (with traceparent)", record)):
                print(f"{label}: {rounds} rounds of {n} requests per variant")
                medians = await measure(servers, request, rounds, n)
                print(
                    f"{label}: median time ratio to `without`: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
                )
        finally:
            for server in servers.values():
                await server.close()
            await sink.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 300 requests (a smoke run)")
    args = parser.parse_args()
    asyncio.run(main(2, 300) if args.quick else main(6, 1500))
