"""Usage figures (prints them; asserts nothing): acceptance at the sidecar, delivery, check-and-reserve.

    .venv/bin/python bench/usage_bench.py           # ~1 min
    .venv/bin/python bench/usage_bench.py --quick   # smoke run

Starts `tiergate sync-daemon` and `tiergate sidecar` as processes on free loopback ports (files in
a temporary directory), then measures from this process with aiohttp clients:
1. usage accepted by the sidecar (202 = committed to the outbox with synchronous=FULL), one event
   per POST /v1/usage and 100 per POST /v1/usage/batch, at several concurrent connections;
2. delivery: a backlog accepted while the daemon is stopped, drained once it is back (events/s
   from the daemon's start to its counter reaching the total, so including its start-up);
3. POST /v1/check latency with and without `"reserve": true`, one connection, same tenants.
Writes the figures to bench/results/usage_bench_{full,normal}.json (`--sync`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import REPO, free_port

RESULTS = REPO / "bench" / "results" / "usage_bench_full.json"
TIERGATE = Path(sys.executable).with_name("tiergate")
TOKEN = "bench-feed-token"


def start(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([str(TIERGATE), role], env={**os.environ, **env}, stdout=out, stderr=out)


async def wait_up(session: aiohttp.ClientSession, url: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                if response.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def event(tenant: str, tid: str) -> dict[str, Any]:
    return {"transaction_id": tid, "external_customer_id": tenant, "code": "api_calls"}


async def accept_rate(
    session: aiohttp.ClientSession, base: str, *, total: int, per_request: int, connections: int, tag: str
) -> float:
    requests = total // per_request
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            tenant = f"acc-{n % 200}"
            body: dict[str, Any]
            if per_request == 1:
                path, body = "/v1/usage", {"event": event(tenant, f"{tag}-{n}")}
            else:
                batch = [event(tenant, f"{tag}-{n}-{i}") for i in range(per_request)]
                path, body = "/v1/usage/batch", {"events": batch}
            async with session.post(base + path, json=body) as response:
                assert response.status == 202, await response.text()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return requests * per_request / (time.perf_counter() - started)


async def daemon_used(session: aiohttp.ClientSession, daemon: str, tenant: str) -> int:
    async with session.get(f"{daemon}/v1/usage/{tenant}", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        body = await r.json()
        return int(sum(c["value"] for c in body["counters"]))


async def latencies(session: aiohttp.ClientSession, base: str, n: int, reserve: bool) -> dict[str, float]:
    samples = []
    for i in range(n):
        body: dict[str, Any] = {"tenant": f"lat-{i % 250}", "feature": "api_calls"}
        if reserve:
            body["reserve"] = True
        started = time.perf_counter_ns()
        async with session.post(base + "/v1/check", json=body) as response:
            answer = await response.json()
        samples.append(time.perf_counter_ns() - started)
        assert answer["allow"], answer
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1e3,
        "p90_us": samples[int(len(samples) * 0.9)] / 1e3,
        "p99_us": samples[int(len(samples) * 0.99)] / 1e3,
        "mean_us": statistics.fmean(samples) / 1e3,
    }


async def run(quick: bool, sync: str) -> dict[str, Any]:
    scale = 10 if quick else 1
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tiergate-usage-bench-") as tmp:
        work = Path(tmp)
        daemon_port, sidecar_port = free_port(), free_port()
        daemon, base = f"http://127.0.0.1:{daemon_port}", f"http://127.0.0.1:{sidecar_port}"
        daemon_env = {
            "TIERGATE_STRIPE_API_KEY": "sk_test_bench",
            "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_bench_0123456789",
            "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",
            "TIERGATE_RECONCILE_AT_START": "false",
            "TIERGATE_FEED_TOKEN": TOKEN,
            "TIERGATE_MIRROR_PATH": str(work / "mirror.db"),
            "TIERGATE_DAEMON_PORT": str(daemon_port),
            "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
            "TIERGATE_LOG_LEVEL": "warning",
        }
        sidecar_env = {
            "TIERGATE_SIDECAR_PORT": str(sidecar_port),
            "TIERGATE_REPLICA_PATH": str(work / "sidecar" / "replica.db"),
            "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
            "TIERGATE_POLICIES": str(REPO / "policies"),
            "TIERGATE_DAEMON_URL": daemon,
            "TIERGATE_FEED_TOKEN": TOKEN,
            "TIERGATE_DELIVERY_BACKOFF_MAX_S": "0.5",
            "TIERGATE_DECISION_LOG_SAMPLE": "0",
            "TIERGATE_LOG_LEVEL": "warning",
            "TIERGATE_OUTBOX_SYNC": sync,
        }
        log = work / "processes.log"
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            # 1+2: the daemon is down while the sidecar accepts: the outbox fills, then drains.
            sidecar = start("sidecar", sidecar_env, log)
            daemon_process: subprocess.Popen[bytes] | None = None
            try:
                await wait_up(session, base + "/healthz")
                accepted = 0
                for connections in (1, 16):
                    rate = await accept_rate(
                        session,
                        base,
                        total=4000 // scale,
                        per_request=1,
                        connections=connections,
                        tag=f"s{connections}",
                    )
                    figures[f"accept_single_c{connections}_events_s"] = round(rate)
                    accepted += 4000 // scale
                for connections in (1, 8):
                    rate = await accept_rate(
                        session,
                        base,
                        total=50_000 // scale,
                        per_request=100,
                        connections=connections,
                        tag=f"b{connections}",
                    )
                    figures[f"accept_batch100_c{connections}_events_s"] = round(rate)
                    accepted += 50_000 // scale
                figures["backlog_events"] = accepted
                started = time.perf_counter()
                daemon_process = start("sync-daemon", daemon_env, log)
                await wait_up(session, daemon + "/healthz")
                while True:
                    async with session.get(base + "/v1/status") as response:
                        if (await response.json())["usage"]["backlog"] == 0:
                            break
                    await asyncio.sleep(0.02)
                figures["delivery_drain_events_s"] = round(accepted / (time.perf_counter() - started))
                counted = sum([await daemon_used(session, daemon, f"acc-{t}") for t in range(200)])
                assert counted == accepted, f"the daemon counted {counted} of {accepted}"
                await wait_up(session, base + "/readyz")
                # 3: check vs check-and-reserve, after a warm-up of both.
                n = 3000 // scale
                await latencies(session, base, 200, reserve=False)
                await latencies(session, base, 200, reserve=True)
                figures["check_latency"] = await latencies(session, base, n, reserve=False)
                figures["reserve_latency"] = await latencies(session, base, n, reserve=True)
                figures["reserve_p50_ratio"] = round(
                    figures["reserve_latency"]["p50_us"] / figures["check_latency"]["p50_us"], 2
                )
            finally:
                for process in (sidecar, daemon_process):
                    if process is not None:
                        process.terminate()
                        process.wait(timeout=15)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with a tenth of the load")
    parser.add_argument("--sync", choices=["full", "normal"], default="full", help="TIERGATE_OUTBOX_SYNC")
    args = parser.parse_args()
    figures = asyncio.run(run(args.quick, args.sync))
    figures["cpus"] = os.cpu_count()
    figures["outbox_sync"] = args.sync
    print(json.dumps(figures, indent=2))
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        results = RESULTS.with_name(f"usage_bench_{args.sync}.json")
        results.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
