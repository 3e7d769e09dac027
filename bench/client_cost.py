"""Per-check cost of the app's side: Python client -> sidecar over HTTP vs LocalDecisions in process.

Starts a real sidecar on loopback, with its check listener (TIERGATE_CHECK_PORT), over a replica
of synthetic tenants, then times, for a hot set of (tenant, feature) pairs (decision-cache hits on
both sides):
  * `TiergateClient.check` (blocking, kept-alive http.client connection), POST to the main port
    and, with `check_url`, GET to the check port,
  * `AsyncTiergateClient.check` (aiohttp session), the same two ways,
  * `LocalDecisions.check` (the sidecar's DecisionService in this process, replica read-only).
Rounds are interleaved (each path once a round). For each: wall time per check (p50 over rounds),
this process's CPU per check and the sidecar's (from /proc). Ratios are to LocalDecisions, and
check port to main port, measured in the same run. Prints figures, asserts nothing.

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

from harness import process_cpu_s

from demo.processes import Process, free_port, tiergate_command
from tiergate.client import AsyncTiergateClient, TiergateClient
from tiergate.models import Account
from tiergate.sidecar.local import LocalDecisions
from tiergate.sidecar.replica.store import ReplicaWriter, open_replica

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


Check = Callable[[str, str], Awaitable[object]]


async def one_round(check: Check, checks: int, pid: int | None) -> tuple[float, float, float]:
    """Wall, app CPU and sidecar CPU per check (µs) of `checks` checks one at a time."""
    wall, cpu, side = time.perf_counter(), time.process_time(), (process_cpu_s(pid) if pid else 0.0)
    for i in range(checks):
        tenant, feature = PAIRS[i % len(PAIRS)]
        await check(tenant, feature)
    return (
        (time.perf_counter() - wall) / checks * 1e6,
        (time.process_time() - cpu) / checks * 1e6,
        ((process_cpu_s(pid) if pid else 0.0) - side) / checks * 1e6,
    )


async def measure(
    paths: list[tuple[str, Check, int | None]], checks: int, rounds: int
) -> list[dict[str, Any]]:
    """Every path once a round, interleaved, so load that comes and goes hits them alike."""
    for _, check, _ in paths:
        for tenant, feature in PAIRS:  # warm every cache and connection pool
            await check(tenant, feature)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in paths}
    for _ in range(rounds):
        for name, check, pid in paths:
            samples[name].append(await one_round(check, checks, pid))
    return [
        {
            "name": name,
            "wall_us_p50": round(statistics.median(s[0] for s in samples[name]), 1),
            "cpu_us_p50": round(statistics.median(s[1] for s in samples[name]), 1),
            "sidecar_cpu_us_p50": round(statistics.median(s[2] for s in samples[name]), 1),
        }
        for name, _, _ in paths
    ]


async def run(
    home: Path, url: str, check_url: str, pid: int, checks: int, rounds: int
) -> list[dict[str, Any]]:
    main_port = TiergateClient(url, timeout_s=5)
    check_port = TiergateClient(url, check_url=check_url, timeout_s=5)

    def blocking(client: TiergateClient) -> Check:
        async def check(tenant: str, feature: str) -> object:
            return client.check(tenant, feature)

        return check

    try:
        async with (
            AsyncTiergateClient(url, timeout_s=5) as amain,
            AsyncTiergateClient(url, check_url=check_url, timeout_s=5) as acheck,
            LocalDecisions(
                replica_path=home / "replica.db",
                plans=REPO / "plans" / "plans.yaml",
                policies=home / "policies",
            ) as local,
        ):
            paths: list[tuple[str, Check, int | None]] = [
                ("TiergateClient -> main port", blocking(main_port), pid),
                ("TiergateClient -> check port", blocking(check_port), pid),
                ("AsyncTiergateClient -> main port", amain.check, pid),
                ("AsyncTiergateClient -> check port", acheck.check, pid),
                ("LocalDecisions (in process)", local.check, None),
            ]
            return await measure(paths, checks, rounds)
    finally:
        main_port.close()
        check_port.close()


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
        port, check_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
        env.update(
            TIERGATE_SIDECAR_PORT=str(port),
            TIERGATE_CHECK_PORT=str(check_port),
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
            check_url = f"http://127.0.0.1:{check_port}"
            results = asyncio.run(run(home, url, check_url, sidecar.pid, args.checks, args.rounds))
        finally:
            sidecar.stop()
    local = results[-1]
    for row in results:
        row["wall_ratio_to_local"] = round(row["wall_us_p50"] / local["wall_us_p50"], 1)
        row["cpu_ratio_to_local"] = round(row["cpu_us_p50"] / local["cpu_us_p50"], 1)
        print(
            f"{row['name']:<34} {row['wall_us_p50']:>8.1f} µs/check wall ({row['wall_ratio_to_local']:>5.1f}x)"
            f" {row['cpu_us_p50']:>8.1f} µs/check app CPU ({row['cpu_ratio_to_local']:>5.1f}x)"
            f" {row['sidecar_cpu_us_p50']:>8.1f} µs/check sidecar CPU"
        )
    for client in ("TiergateClient", "AsyncTiergateClient"):
        main_row, check_row = (
            next(r for r in results if r["name"] == f"{client} -> {port}")
            for port in ("main port", "check port")
        )
        print(
            f"{client}: check port / main port: wall {check_row['wall_us_p50'] / main_row['wall_us_p50']:.2f}x,"
            f" app CPU {check_row['cpu_us_p50'] / main_row['cpu_us_p50']:.2f}x,"
            f" sidecar CPU {check_row['sidecar_cpu_us_p50'] / max(main_row['sidecar_cpu_us_p50'], 0.1):.2f}x"
        )
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"checks": args.checks, "rounds": args.rounds, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
