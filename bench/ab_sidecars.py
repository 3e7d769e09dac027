"""Two sidecars, A and B (two checkouts), on one replica, measured in alternation (prints figures).

    .venv/bin/python bench/ab_sidecars.py --a /tmp/before --b . --scenarios check_hot,reserve

On a shared machine the load moves between runs; alternating short runs of A and B (A, B, B, A,
A, B, ...) exposes both to the same moods, and the figure that holds up is server CPU µs per
request at 32 connections (from /proc/<pid>/stat), reported per round and as the median of the
B/A ratios. Each sidecar runs from its checkout (PYTHONPATH) with this checkout's virtualenv;
the request files are bench/sidecar_latency.py's. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import REPO, free_port, load_average, process_cpu_s
from sidecar_latency import (  # bench/ is on sys.path: this file runs as a script
    CHECK_FEATURES,
    METERED_FEATURE,
    authz_lines,
    check_lines,
    make_replica,
    pick_generator,
    reserve_lines,
    route_examples,
    stop,
    wait_ready,
    zipf_lines,
)

from tiergate.catalog import load_catalog


def request_files(tmp: Path, tenants: list[str], hot: list[str], rng: random.Random) -> dict[str, Path]:
    catalog = load_catalog(REPO / "plans" / "plans.yaml")
    features = [f for f in CHECK_FEATURES if f in catalog.features]
    lines = {
        "check_hot": check_lines(hot, features, 20_000, rng),
        "check_zipf": zipf_lines(tenants, features, 200_000, rng),
        "check_uniform": check_lines(tenants, features, 200_000, rng),
        "reserve": reserve_lines(hot, METERED_FEATURE, 20_000, rng),
        "authz": authz_lines(hot, route_examples(catalog), "X-Tenant-Id", 20_000, rng),
    }
    files = {}
    for key, found in lines.items():
        files[key] = tmp / f"{key}.txt"
        files[key].write_text("\n".join(found) + "\n")
    return files


def start(checkout: Path, name: str, tmp: Path, env: dict[str, str], extra: list[str]) -> tuple[Any, str]:
    port = free_port()
    settings = {
        **env,
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_OUTBOX_PATH": str(tmp / f"outbox-{name}.db"),
        **dict(item.split("=", 1) for item in extra),
    }
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")} | settings
    environ["PYTHONPATH"] = str(checkout)
    log = (tmp / f"sidecar-{name}.log").open("wb")
    tiergate = str(Path(sys.executable).with_name("tiergate"))
    process = subprocess.Popen([tiergate, "sidecar"], env=environ, cwd=checkout, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/healthz", process, tmp / f"sidecar-{name}.log")
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B")
    parser.add_argument("--a-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--b-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--scenarios", default="check_hot,check_zipf,check_uniform,reserve")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    generator = pick_generator("auto", False, None)
    with tempfile.TemporaryDirectory(prefix="tiergate-ab-") as tmpdir:
        tmp = Path(tmpdir)
        catalog = load_catalog(REPO / "plans" / "plans.yaml")
        document = make_replica(catalog, args.tenants, rng, datetime.now(UTC))
        (tmp / "replica.json").write_text(json.dumps(document))
        tenants = [a["tenant"] for a in document["accounts"]]
        env = {
            "TIERGATE_SIDECAR_HOST": "127.0.0.1",
            "TIERGATE_REPLICA_PATH": str(tmp / "replica.db"),
            "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
            "TIERGATE_POLICIES": str(REPO / "policies"),
            "TIERGATE_LOG_JSON": "true",
            "TIERGATE_DECISION_LOG_SAMPLE": "0",
        }
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")} | env
        tiergate = str(Path(sys.executable).with_name("tiergate"))
        subprocess.run([tiergate, "replica", "import", str(tmp / "replica.json")], env=environ, check=True)
        files = request_files(tmp, tenants, rng.sample(tenants, 1000), rng)
        a, a_url = start(args.a, "a", tmp, env, args.a_env)
        b, b_url = start(args.b, "b", tmp, env, args.b_env)
        results: dict[str, list[dict[str, Any]]] = {}
        try:
            for key in [k for k in args.scenarios.split(",") if k]:
                results[key] = []
                for n in range(args.rounds):
                    order = [("a", a, a_url), ("b", b, b_url)]
                    row: dict[str, Any] = {"load": load_average()}
                    for name, process, url in order if n % 2 == 0 else order[::-1]:
                        c1 = generator.run(url, files[key], 1, args.duration, offset=n * 997)
                        before = process_cpu_s(process.pid)
                        c32 = generator.run(url, files[key], 32, args.duration, offset=n * 1999)
                        cpu = process_cpu_s(process.pid) - before
                        row[name] = {
                            "p50_us": c1["p50_us"],
                            "p99_us": c1["p99_us"],
                            "rps_c32": c32["rps"],
                            "cpu_us": round(cpu * 1e6 / c32["requests"], 1) if c32["requests"] else None,
                        }
                    results[key].append(row)
                    print(
                        f"{key:<14} round {n + 1}: load {row['load']:.1f}  A {row['a']}  B {row['b']}",
                        flush=True,
                    )
        finally:
            stop(a)
            stop(b)
    print()
    for key, rows in results.items():
        cpu_ratios = [
            r["b"]["cpu_us"] / r["a"]["cpu_us"] for r in rows if r["a"]["cpu_us"] and r["b"]["cpu_us"]
        ]
        p50 = [r["b"]["p50_us"] / r["a"]["p50_us"] for r in rows if r["a"]["p50_us"]]
        a_cpu = statistics.median(r["a"]["cpu_us"] for r in rows)
        b_cpu = statistics.median(r["b"]["cpu_us"] for r in rows)
        print(
            f"{key:<14} CPU µs/req @32: A {a_cpu:.1f}, B {b_cpu:.1f}, B/A median {statistics.median(cpu_ratios):.2f}; "
            f"p50 @1 B/A median {statistics.median(p50):.2f}"
        )
    if args.output is not None:
        args.output.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"a": str(args.a), "b": str(args.b), "output": None},
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
