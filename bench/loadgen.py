"""A small Python load generator: the fallback of bench/sidecar_latency.py when wrk is missing.

N connections (one asyncio task each, one aiohttp session with a pool of N), a fixed duration or
request count, per-request latency with time.perf_counter_ns; prints p50/p90/p99 and requests/s.
It reads the same request file as bench/wrk_requests.lua (one request a line, tab-separated:
METHOD, PATH, BODY, then header name/value pairs) and prints the same `BENCH_JSON {...}` line.

Caveat: it is Python. On a 2-core machine it takes a core from the server it measures, and its
own client overhead (~100 us a request) is inside every latency it reports; wrk is the reference.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:9191 --requests FILE -c 1 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from harness import percentile


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


def read_requests(path: Path) -> list[Request]:
    requests: list[Request] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        method, target, body, *pairs = line.split("\t")
        headers = dict(zip(pairs[0::2], pairs[1::2], strict=True))
        if body:
            headers["Content-Type"] = "application/json"
        requests.append(Request(method, target, body.encode() if body else None, headers))
    if not requests:
        raise SystemExit(f"{path}: no requests")
    return requests


async def run_load(
    url: str,
    requests: list[Request],
    *,
    connections: int,
    duration_s: float | None,
    max_requests: int | None = None,
    offset: int = 0,
    timeout_s: float = 5.0,
) -> dict[str, float | int]:
    """Drive `connections` concurrent request loops; returns the BENCH_JSON figures."""
    latencies_ns: list[int] = []
    status_errors = 0
    other_errors = 0
    sent = 0
    deadline = time.perf_counter() + duration_s if duration_s is not None else float("inf")
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession, start: int) -> None:
        nonlocal status_errors, other_errors, sent
        index = start
        while time.perf_counter() < deadline and (max_requests is None or sent < max_requests):
            sent += 1
            request = requests[index % len(requests)]
            index += 1
            began = time.perf_counter_ns()
            try:
                async with session.request(
                    request.method, url + request.path, data=request.body, headers=request.headers
                ) as response:
                    await response.read()
                    if response.status >= 400:
                        status_errors += 1
            except (aiohttp.ClientError, TimeoutError):
                other_errors += 1
                continue
            latencies_ns.append(time.perf_counter_ns() - began)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        share = len(requests) // max(connections, 1)
        await asyncio.gather(*(worker(session, offset + i * share) for i in range(connections)))
    elapsed = time.perf_counter() - started
    us = sorted(ns // 1000 for ns in latencies_ns)
    return {
        "requests": len(us),
        "duration_us": int(elapsed * 1e6),
        "p50_us": percentile(us, 50),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
        "mean_us": round(sum(us) / len(us), 1) if us else 0.0,
        "max_us": us[-1] if us else 0,
        "errors_connect": 0,
        "errors_read": other_errors,
        "errors_write": 0,
        "non_2xx_3xx": status_errors,
        "errors_timeout": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:9191")
    parser.add_argument("--requests", type=Path, required=True, help="request file")
    parser.add_argument("-c", "--connections", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("-n", "--max-requests", type=int, default=None)
    parser.add_argument("--offset", type=int, default=0, help="first line of the file to send")
    args = parser.parse_args()
    figures = asyncio.run(
        run_load(
            args.url.rstrip("/"),
            read_requests(args.requests),
            connections=args.connections,
            duration_s=args.duration,
            max_requests=args.max_requests,
            offset=args.offset,
        )
    )
    print("BENCH_JSON " + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
