"""Quota leases (`enforcement: leased`, docs/adr/0045), figures only (asserts nothing).

    .venv/bin/python bench/leases.py            # ~1 min
    .venv/bin/python bench/leases.py --quick    # ~20 s

Starts `tiergate sync-daemon` and 4 `tiergate sidecar` processes following it (free loopback ports,
a temporary directory) with a catalog where `reports_run` (limit 100) and `exports` (limit 10^6)
are leased and `api_calls` (limit 10^6) stays local. Then, from this process:
1. exactness: 1,000 concurrent reserves with unique transaction ids against the limit of 100,
   spread over the 4 sidecars, in each of `--runs` runs (20 by default): how many were allowed;
2. load, uniform (200 tenants) and hot-tenant (90 % on one tenant), at `--connections` spread over
   the 4 sidecars: the share of reserves that waited on a refill, p50/p99, against the same load on
   the local metric in the same run;
3. the sidecars' CPU per reserve inside a lease against local mode, same run (ratio leased/local).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import REPO, Server, free_port, percentiles_ms, process_cpu_s, spawn, table

TIERGATE = str(Path(sys.executable).with_name("tiergate"))
TOKEN = "bench-feed-token"
SIDECARS = 4


def catalog(work: Path) -> Path:
    text = (REPO / "plans" / "plans.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "  api_calls: {aggregation: count}\n",
        "  api_calls: {aggregation: count}\n  reports_run: {aggregation: count, enforcement: leased}\n",
    )
    text = text.replace(
        "exports: {aggregation: count, alerts: [0.8, 1.0]}",
        "exports: {aggregation: count, enforcement: leased}",
    )
    text = text.replace(
        "      api_calls: {limit: 1000}\n      exports: {limit: 10}\n",
        "      api_calls: {limit: 1000000}\n      exports: {limit: 1000000}\n      reports_run: {limit: 100}\n",
        1,
    )
    path = work / "plans.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def start(work: Path, plans: Path) -> tuple[Server, list[Server]]:
    port = free_port()
    daemon = spawn(
        "daemon",
        [TIERGATE, "sync-daemon"],
        {
            "TIERGATE_STRIPE_API_KEY": "sk_test_bench",
            "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_bench_0123456789",
            "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",
            "TIERGATE_RECONCILE_AT_START": "false",
            "TIERGATE_FEED_TOKEN": TOKEN,
            "TIERGATE_MIRROR_PATH": str(work / "mirror.db"),
            "TIERGATE_DAEMON_PORT": str(port),
            "TIERGATE_PLANS": str(plans),
            "TIERGATE_POLICIES": str(REPO / "policies"),
        },
        work,
        f"http://127.0.0.1:{port}",
    )
    daemon.wait("/healthz")
    sidecars = []
    for n in range(SIDECARS):
        sidecar_port = free_port()
        sidecars.append(
            spawn(
                f"sidecar{n}",
                [TIERGATE, "sidecar"],
                {
                    "TIERGATE_SIDECAR_PORT": str(sidecar_port),
                    "TIERGATE_REPLICA_PATH": str(work / f"sidecar{n}" / "replica.db"),
                    "TIERGATE_PLANS": str(plans),
                    "TIERGATE_POLICIES": str(REPO / "policies"),
                    "TIERGATE_DAEMON_URL": daemon.url,
                    "TIERGATE_FEED_TOKEN": TOKEN,
                    "TIERGATE_DECISION_LOG_SAMPLE": "0",
                    "TIERGATE_OUTBOX_SYNC": "normal",
                },
                work,
                f"http://127.0.0.1:{sidecar_port}",
            )
        )
    for sidecar in sidecars:
        sidecar.wait("/readyz")
    return daemon, sidecars


async def reserve(session: aiohttp.ClientSession, url: str, tenant: str, feature: str, tid: str) -> bool:
    body = {"tenant": tenant, "feature": feature, "reserve": True, "transaction_id": tid}
    async with session.post(url + "/v1/check", json=body) as response:
        answer = await response.json()
        return bool(answer["reservation"]["reserved"])


async def exactness(session: aiohttp.ClientSession, sidecars: list[Server], runs: int) -> list[int]:
    allowed = []
    for run in range(runs):
        tenant = f"exact-{run}"
        answers = await asyncio.gather(
            *(
                reserve(session, sidecars[n % SIDECARS].url, tenant, "reports_run", f"{tenant}-{n}")
                for n in range(1000)
            )
        )
        allowed.append(sum(answers))
    return allowed


async def status_waits(session: aiohttp.ClientSession, sidecars: list[Server]) -> int:
    waits = 0
    for sidecar in sidecars:
        async with session.get(sidecar.url + "/v1/status") as response:
            waits += int((await response.json())["usage"]["leases"]["waits"])
    return waits


async def load(
    session: aiohttp.ClientSession,
    sidecars: list[Server],
    feature: str,
    pick: Any,
    total: int,
    connections: int,
    tag: str,
) -> tuple[list[float], float]:
    """`total` reserves at `connections`; returns latencies and the sidecars' CPU seconds spent."""
    latencies: list[float] = []
    counter = iter(range(total))
    cpu_before = sum(process_cpu_s(s.popen.pid) for s in sidecars)

    async def worker(w: int) -> None:
        for n in counter:
            url = sidecars[(n + w) % SIDECARS].url
            started = time.perf_counter()
            await reserve(session, url, pick(n), feature, f"{tag}-{n}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(w) for w in range(connections)))
    return latencies, sum(process_cpu_s(s.popen.pid) for s in sidecars) - cpu_before


async def measure(args: argparse.Namespace, daemon: Server, sidecars: list[Server]) -> None:
    connector = aiohttp.TCPConnector(limit=1100)
    async with aiohttp.ClientSession(connector=connector) as session:
        allowed = await exactness(session, sidecars, args.runs)
        print(f"exactness: allowed per run of 1,000 reserves against 100 (4 sidecars): {allowed}")
        print(f"  runs with exactly 100: {sum(a == 100 for a in allowed)} of {len(allowed)}")
        rng = random.Random(7)
        uniform = lambda n: f"u-{rng.randrange(200)}"  # noqa: E731
        hot = lambda n: "hot" if rng.random() < 0.9 else f"h-{rng.randrange(200)}"  # noqa: E731
        rows = []
        cpu: dict[str, float] = {}
        for name, pick in (("uniform", uniform), ("hot tenant", hot)):
            for feature, mode in (("api_calls", "local"), ("exports", "leased")):
                await load(
                    session, sidecars, feature, pick, args.total // 5, args.connections, f"warm-{name}-{mode}"
                )
                waits_before = await status_waits(session, sidecars)
                daemon_before = process_cpu_s(daemon.popen.pid)
                latencies, cpu_s = await load(
                    session, sidecars, feature, pick, args.total, args.connections, f"{name}-{mode}"
                )
                daemon_cpu_s = process_cpu_s(daemon.popen.pid) - daemon_before
                waited = (await status_waits(session, sidecars)) - waits_before
                p = percentiles_ms(latencies)
                cpu[f"{name} {mode}"] = cpu_s / args.total
                rows.append(
                    [
                        name,
                        mode,
                        f"{waited / args.total:.2%}",
                        p["p50_ms"],
                        p["p99_ms"],
                        round(cpu_s / args.total * 1e6),
                        round(daemon_cpu_s / args.total * 1e6),
                    ]
                )
        table(
            f"reserves, {args.total} per row at {args.connections} connections over 4 sidecars",
            [
                "load",
                "mode",
                "waited on a refill",
                "p50 ms",
                "p99 ms",
                "sidecars' CPU µs/reserve",
                "daemon's",
            ],
            rows,
        )
        for name in ("uniform", "hot tenant"):
            ratio = cpu[f"{name} leased"] / cpu[f"{name} local"]
            print(f"CPU per reserve, leased / local ({name}): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--total", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.total = 3, 3000
    with tempfile.TemporaryDirectory(prefix="tiergate-leases-") as tmp:
        work = Path(tmp)
        daemon, sidecars = start(work, catalog(work))
        try:
            asyncio.run(measure(args, daemon, sidecars))
        finally:
            for server in [*sidecars, daemon]:
                server.stop()


if __name__ == "__main__":
    main()
