"""Per-check cost of the app's side: Python client -> sidecar over HTTP vs LocalDecisions in process.

Starts a real sidecar on loopback over a replica of the sidecar tests' tenants, then times, for a
hot set of (tenant, feature) pairs (decision-cache hits on both sides):
  * `TiergateClient.check` (blocking, kept-alive http.client connection),
  * `AsyncTiergateClient.check` (aiohttp session),
  * `LocalDecisions.check` (the sidecar's DecisionService in this process, replica read-only).
For each: wall time per check (p50 over rounds) and this process's CPU per check. Ratios are to
LocalDecisions, measured in the same run. Prints figures, asserts nothing.

    .venv/bin/python bench/client_cost.py [--checks 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from demo.processes import Process, free_port, tiergate_command
from sidecar.local import LocalDecisions
from sidecar.replica.store import ReplicaWriter, open_replica
from tiergate.client import AsyncTiergateClient, TiergateClient
from tiergate.models import Account

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "client_cost.json"
TIERS = ("starter", "pro", "enterprise")
PAIRS = [(f"t{i}", f) for i in range(30) for f in ("sso", "api_calls", "reports")]  # t20..t29: no account


def write_replica(path: Path) -> None:
    now = datetime.now(UTC)
    accounts = [
        Account(
            tenant=f"t{i}",
            tier=TIERS[i % 3],
            status="active",
            current_period_start=now - timedelta(days=3),
            current_period_end=now + timedelta(days=27),
        )
        for i in range(20)
    ]
    db = open_replica(path)
    ReplicaWriter(db).replace_all(accounts, [], data_as_of=now)
    db.close()


async def measure(
    name: str, check: Callable[[str, str], Awaitable[object]], checks: int, rounds: int
) -> dict[str, Any]:
    for tenant, feature in PAIRS:  # warm both caches
        await check(tenant, feature)
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(checks):
            tenant, feature = PAIRS[i % len(PAIRS)]
            await check(tenant, feature)
        walls.append((time.perf_counter() - wall) / checks * 1e6)
        cpus.append((time.process_time() - cpu) / checks * 1e6)
    return {
        "name": name,
        "wall_us_p50": round(statistics.median(walls), 1),
        "cpu_us_p50": round(statistics.median(cpus), 1),
    }


async def run(home: Path, url: str, checks: int, rounds: int) -> list[dict[str, Any]]:
    results = []
    sync_client = TiergateClient(url, timeout_s=5)

    async def blocking(tenant: str, feature: str) -> object:
        return sync_client.check(tenant, feature)

    results.append(await measure("TiergateClient -> sidecar", blocking, checks, rounds))
    sync_client.close()
    async with AsyncTiergateClient(url, timeout_s=5) as client:
        results.append(await measure("AsyncTiergateClient -> sidecar", client.check, checks, rounds))
    async with LocalDecisions(
        replica_path=home / "replica.db", plans=REPO / "plans" / "plans.yaml", policies=home / "policies"
    ) as local:
        results.append(await measure("LocalDecisions (in process)", local.check, checks, rounds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        shutil.copytree(REPO / "policies", home / "policies")
        write_replica(home / "replica.db")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
        env.update(
            TIERGATE_SIDECAR_PORT=str(port),
            TIERGATE_REPLICA_PATH=str(home / "replica.db"),
            TIERGATE_PLANS=str(REPO / "plans" / "plans.yaml"),
            TIERGATE_POLICIES=str(home / "policies"),
            TIERGATE_DECISION_LOG_SAMPLE="0",
            TIERGATE_DECISION_LOG_DENIES="false",
            TIERGATE_LOG_JSON="false",
        )
        sidecar = Process("sidecar", tiergate_command("sidecar"), env, home / "sidecar.log", home)
        sidecar.start()
        try:
            url = f"http://127.0.0.1:{port}"
            sidecar.wait_http(url + "/readyz", lambda status: status == 200)
            results = asyncio.run(run(home, url, args.checks, args.rounds))
        finally:
            sidecar.stop()
    local = results[-1]
    for row in results:
        row["wall_ratio_to_local"] = round(row["wall_us_p50"] / local["wall_us_p50"], 1)
        row["cpu_ratio_to_local"] = round(row["cpu_us_p50"] / local["cpu_us_p50"], 1)
        print(
            f"{row['name']:<32} {row['wall_us_p50']:>8.1f} µs/check wall ({row['wall_ratio_to_local']:>5.1f}x)"
            f" {row['cpu_us_p50']:>8.1f} µs/check app CPU ({row['cpu_ratio_to_local']:>5.1f}x)"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"checks": args.checks, "rounds": args.rounds, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
