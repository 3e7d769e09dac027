"""Usage sink figures (prints them; asserts nothing): how fast the daemon drains a backlog to Lago.

    .venv/bin/python bench/sink_bench.py           # 20,000 events, ~1 min
    .venv/bin/python bench/sink_bench.py --quick   # 2,000 events

Starts `tiergate sync-daemon` as a process with the Lago sink pointed at the recording Lago double
(tests/lago_double.py, in this process on a free loopback port), while the double answers 503:
ingests N events (1,000 per POST), then lets the double answer and times the drain until the
double holds all N. Baseline in the same run: the same N events POSTed straight to the double,
100 per call, one after another (what the sink's calls cost without the mirror and the cursor).
Writes bench/results/sink_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import REPO

from demo.processes import Process, free_port, tiergate_command
from tests.lago_double import API_KEY, LagoDouble, start_lago

RESULTS = REPO / "bench" / "results" / "sink_bench.json"
TOKEN = "bench-feed-token"


def event(i: int) -> dict[str, Any]:
    return {
        "transaction_id": f"bench-{i}",
        "external_subscription_id": "sub_bench",
        "code": "storage_gb",
        "timestamp": f"{time.time() - 60:.3f}",
        "properties": {"gb": 1},
        "tiergate_tenant": "t_bench",
    }


async def baseline(n: int) -> float:
    """Events/s POSTed straight to a fresh double, 100 per call."""
    double = LagoDouble()
    server = await start_lago(double)
    url = str(server.make_url("/api/v1/events/batch"))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        for i in range(0, n, 100):
            batch = [
                {k: v for k, v in event(j).items() if k != "tiergate_tenant"}
                for j in range(i, min(i + 100, n))
            ]
            async with session.post(url, json={"events": batch}, headers=headers) as response:
                assert response.status == 200, await response.text()
    elapsed = time.perf_counter() - started
    await server.close()
    return n / elapsed


async def through_the_sink(n: int, workdir: Path) -> float:
    double = LagoDouble()
    double.fail_next(10**9, 503)  # Lago "down" while the backlog is ingested
    server = await start_lago(double)
    port = free_port()
    env = {
        **os.environ,
        "TIERGATE_DAEMON_PORT": str(port),
        "TIERGATE_MIRROR_PATH": str(workdir / "mirror.db"),
        "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
        "TIERGATE_STRIPE_API_KEY": "sk_test_bench",
        "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",
        "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_bench_0123456789",
        "TIERGATE_FEED_TOKEN": TOKEN,
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_LAGO_API_URL": str(server.make_url("")).rstrip("/"),
        "TIERGATE_LAGO_API_KEY": API_KEY,
        "TIERGATE_SINK_BACKOFF_MAX_S": "0.2",
        "TIERGATE_LOG_LEVEL": "warning",
    }
    daemon = Process("daemon", tiergate_command("sync-daemon"), env, workdir / "daemon.log", REPO)
    daemon.start()
    try:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(daemon.wait_http, base + "/readyz", lambda s: s == 200)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            for i in range(0, n, 1000):
                batch = [event(j) for j in range(i, min(i + 1000, n))]
                async with session.post(
                    f"{base}/v1/usage/batch", json={"events": batch}, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
        double.resume()  # Lago is back: time the drain
        started = time.perf_counter()
        await double.wait_accepted(n)
        elapsed = time.perf_counter() - started
        assert sorted(double.accepted) == sorted(f"bench-{i}" for i in range(n))
        return n / elapsed
    finally:
        await asyncio.to_thread(daemon.stop)
        await server.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    n = 2000 if parser.parse_args().quick else 20_000
    raw = await baseline(n)
    with tempfile.TemporaryDirectory() as tmp:
        sink = await through_the_sink(n, Path(tmp))
    figures: dict[str, float] = {
        "events": n,
        "baseline_events_per_s": round(raw),
        "sink_events_per_s": round(sink),
    }
    figures["sink_vs_baseline"] = round(sink / raw, 2)
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
