"""Hold round trip (create + settle) against a check, same run (prints them; asserts nothing).

    .venv/bin/python bench/holds_bench.py                  # ~1 min, outbox synchronous=FULL
    .venv/bin/python bench/holds_bench.py --sync normal    # the chart's choice on an emptyDir
    .venv/bin/python bench/holds_bench.py --quick          # smoke run

Starts `tiergate sidecar` (static mode: no daemon, so delivery does not compete) on a free
loopback port, then measures from this process at one connection, interleaved round by round so a
busy machine moves every figure alike: `POST /v1/check`, check-and-reserve, `POST /v1/holds`,
`POST /v1/holds/{id}/settle`, and the round trip (the two calls back to back). Ratios are p50s
against the check's p50 of the same run. Writes bench/results/holds_bench_{full,normal}.json
(not with `--quick`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from harness import REPO, free_port

TIERGATE = Path(sys.executable).with_name("tiergate")
TENANTS = 500  # free tier: 1000 api_calls each; a round trip settles one


async def wait_up(session: aiohttp.ClientSession, url: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as response:
        answer = await response.json()
        if response.status >= 300:
            raise RuntimeError(f"{url}: {response.status} {answer}")
        return answer


def percentiles(samples: list[int]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_us": samples[len(samples) // 2] / 1e3,
        "p90_us": samples[int(len(samples) * 0.9)] / 1e3,
        "p99_us": samples[int(len(samples) * 0.99)] / 1e3,
    }


async def timed(session: aiohttp.ClientSession, url: str, body: dict[str, Any], into: list[int]) -> Any:
    started = time.perf_counter_ns()
    answer = await post(session, url, body)
    into.append(time.perf_counter_ns() - started)
    return answer


async def measure(session: aiohttp.ClientSession, base: str, n: int) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {k: [] for k in ("check", "reserve", "hold", "settle", "round_trip")}
    for i in range(n):
        check = {"tenant": f"h-{i % TENANTS}", "feature": "api_calls"}
        await timed(session, base + "/v1/check", check, samples["check"])
        await timed(session, base + "/v1/check", {**check, "reserve": True}, samples["reserve"])
        started = time.perf_counter_ns()
        held = await timed(session, base + "/v1/holds", {**check, "quantity": 2}, samples["hold"])
        await timed(session, f"{base}/v1/holds/{held['hold_id']}/settle", {"quantity": 1}, samples["settle"])
        samples["round_trip"].append(time.perf_counter_ns() - started)
    return samples


def start_sidecar(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen([str(TIERGATE), "sidecar"], env=env, stdout=log, stderr=log)


async def run(quick: bool, sync: str) -> dict[str, Any]:
    n = 300 if quick else 3000
    with tempfile.TemporaryDirectory(prefix="tiergate-holds-bench-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")},
            "TIERGATE_SIDECAR_PORT": str(port),
            "TIERGATE_REPLICA_PATH": str(Path(tmp) / "replica.db"),
            "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
            "TIERGATE_POLICIES": str(REPO / "policies"),
            "TIERGATE_DECISION_LOG_SAMPLE": "0",
            "TIERGATE_LOG_LEVEL": "warning",
            "TIERGATE_OUTBOX_SYNC": sync,
        }
        process = start_sidecar(env, Path(tmp) / "sidecar.log")
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
                await wait_up(session, base + "/readyz")
                await measure(session, base, 100)  # warm-up
                samples = await measure(session, base, n)
        finally:
            process.terminate()
            process.wait(timeout=15)
    figures: dict[str, Any] = {"sync": sync, "rounds": n}
    figures.update({name: percentiles(values) for name, values in samples.items()})
    check = figures["check"]["p50_us"]
    for name in ("reserve", "hold", "settle", "round_trip"):
        figures[f"{name}_p50_vs_check"] = round(figures[name]["p50_us"] / check, 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    figures = asyncio.run(run(args.quick, args.sync))
    figures["cpus"] = os.cpu_count()
    figures["load_average"] = os.getloadavg()[0]
    text = json.dumps(figures, indent=2)
    print(text)
    if not args.quick:
        (REPO / "bench" / "results" / f"holds_bench_{args.sync}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
