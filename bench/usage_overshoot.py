"""How far a quota can overshoot across sidecars (prints figures; asserts nothing).

Two sidecars follow one daemon. For each round a fresh tenant on the free tier (`exports`:
10 a month) is hammered by both sidecars at once with check-and-reserve calls until each is
refused; the grants they made together, minus the limit, is the overshoot. Within one sidecar
reserves are atomic; across sidecars each learns of the other's usage one delivery plus one feed
round trip later, which is the bound docs/adr/0004 states.

    .venv/bin/python bench/usage_overshoot.py [--rounds 20] [--connections 2] [--intervals-ms 0 10 50 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from demo.processes import Process, free_port, tiergate_command

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-overshoot-token"
FEATURE, LIMIT = "exports", 10  # the free tier's monthly limit in plans/plans.yaml
RESULTS = REPO / "bench" / "results" / "usage_overshoot.json"


async def reserve_until_refused(
    session: aiohttp.ClientSession, base: str, tenant: str, interval_s: float
) -> int:
    granted = 0
    while True:
        await asyncio.sleep(interval_s)
        body = {"tenant": tenant, "feature": FEATURE, "reserve": True}
        async with session.post(base + "/v1/check", json=body) as response:
            decision = await response.json()
        if not decision["allow"]:
            return granted
        granted += 1


async def one_round(
    session: aiohttp.ClientSession, bases: list[str], tenant: str, connections: int, interval_s: float
) -> int:
    grants = await asyncio.gather(
        *(
            reserve_until_refused(session, base, tenant, interval_s)
            for base in bases
            for _ in range(connections)
        )
    )
    return sum(grants) - LIMIT


async def run(rounds: int, connections: int, intervals_ms: list[float]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tiergate-overshoot-") as tmp:
        work = Path(tmp)
        daemon_port = free_port()
        daemon_url = f"http://127.0.0.1:{daemon_port}"
        common = {"TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"), "TIERGATE_LOG_LEVEL": "warning"}
        daemon = Process(
            "daemon",
            tiergate_command("sync-daemon"),
            common
            | {
                "TIERGATE_STRIPE_API_KEY": "sk_test_bench",
                "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_bench_0123456789",
                "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",
                "TIERGATE_RECONCILE_AT_START": "false",
                "TIERGATE_FEED_TOKEN": TOKEN,
                "TIERGATE_MIRROR_PATH": str(work / "mirror.db"),
                "TIERGATE_DAEMON_PORT": str(daemon_port),
            },
            work / "daemon.log",
            REPO,
        )
        sidecars = []
        for n in range(2):
            port = free_port()
            env = common | {
                "TIERGATE_SIDECAR_PORT": str(port),
                "TIERGATE_REPLICA_PATH": str(work / f"sidecar{n}" / "replica.db"),
                "TIERGATE_OUTBOX_PATH": str(work / f"sidecar{n}" / "outbox.db"),
                "TIERGATE_POLICIES": str(REPO / "policies"),
                "TIERGATE_DAEMON_URL": daemon_url,
                "TIERGATE_FEED_TOKEN": TOKEN,
                "TIERGATE_DECISION_LOG_SAMPLE": "0",
                "TIERGATE_DECISION_LOG_DENIES": "false",
            }
            sidecars.append(
                (
                    f"http://127.0.0.1:{port}",
                    Process(f"sidecar{n}", tiergate_command("sidecar"), env, work / f"s{n}.log", REPO),
                )
            )
        daemon.start()
        try:
            daemon.wait_http(daemon_url + "/readyz", lambda status: status == 200)
            for base, process in sidecars:
                process.start()
                process.wait_http(base + "/readyz", lambda status: status == 200)
            bases = [base for base, _ in sidecars]
            by_interval: dict[str, list[int]] = {}
            async with aiohttp.ClientSession() as session:
                for interval_ms in intervals_ms:
                    by_interval[f"{interval_ms:g}"] = [
                        await one_round(
                            session, bases, f"o-{interval_ms:g}-{r}", connections, interval_ms / 1000
                        )
                        for r in range(rounds)
                    ]
        finally:
            for _, process in sidecars:
                process.stop()
            daemon.stop()
    return {
        "rounds": rounds,
        "sidecars": 2,
        "reservers_per_sidecar": connections,
        "limit": LIMIT,
        "by_interval_ms": {
            interval: {"mean": round(statistics.fmean(values), 2), "max": max(values), "min": min(values)}
            for interval, values in by_interval.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=2, help="concurrent reservers per sidecar")
    parser.add_argument(
        "--intervals-ms",
        type=float,
        nargs="+",
        default=[0, 10, 50, 200],
        help="pause of each reserver between calls: how fast the tenant spends",
    )
    args = parser.parse_args()
    figures = asyncio.run(run(args.rounds, args.connections, args.intervals_ms))
    print(f"2 sidecars x {args.connections} reservers, limit {LIMIT}, {args.rounds} rounds a row")
    print("| pause between reserves (ms) | overshoot mean | max | min |")
    print("| ---: | ---: | ---: | ---: |")
    for interval, row in figures["by_interval_ms"].items():
        print(f"| {interval} | {row['mean']} | {row['max']} | {row['min']} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
