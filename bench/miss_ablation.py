"""Where a miss's CPU goes over HTTP: the sidecar with parts of the miss path taken out (prints figures).

    .venv/bin/python bench/miss_ablation.py --replica R.db --requests check_uniform.txt [--rounds 3]

`--replica` and `--requests` as bench/sidecar_latency.py makes them (tenants t_000000...; one
request a line). Each round starts a fresh sidecar per variant (so each meets the same empty
materialised set), warms it 1 s at 1 connection, then runs wrk at 32 connections and reads the
server's CPU time from /proc; the variants alternate order between rounds, and the bare aiohttp
handler (bench/baseline_server.py) runs in each round as the reference. Variants:

* `full`: the sidecar as it ships;
* `no_deny_lines`: TIERGATE_DECISION_LOG_DENIES=false;
* `no_policy`: that, and the engine answers a constant decision instead of running regorus (the
  input is still built and rendered, the answer still parsed);
* `no_decision`: that, and `_decide_fresh` answers a constant (no index reads, no input): what is
  left is HTTP, routing, the cache's miss and put, and the response;
* `no_gc` (only when asked for): the sidecar with Python's cycle collector switched off.

Differences between neighbours are what each part costs *inside the server* (cache pollution
included), unlike bench/miss_breakdown.py's pieces timed alone. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from sidecar_latency import (  # bench/ is on sys.path: this file runs as a script
    BASELINE,
    REPO,
    cpu_seconds,
    load_average,
    pick_generator,
    stop,
    wait_ready,
)

from demo.processes import free_port

NO_POLICY = """
import orjson
import tiergate.policy.embedded as embedded
_evaluate = embedded.EmbeddedEngine._evaluate
ANSWER = b'{"allow":true,"reason":"ok","tier":"pro","limit":1000,"used":5,"remaining":995,"valid_until":null}'
def _constant(self, loaded, path, input_json):
    if path.endswith(".decision") and input_json != "{}":
        return orjson.loads(ANSWER)
    return _evaluate(self, loaded, path, input_json)
embedded.EmbeddedEngine._evaluate = _constant
"""
NO_DECISION = """
import tiergate.sidecar.decisions.service as service
from tiergate.models import PolicyAnswer
ANSWER = PolicyAnswer(allow=True, reason="ok", tier="pro", limit=1000, used=5, remaining=995)
async def _constant(self, tenant, feature, quantity, now, age):
    return ANSWER, None
service.DecisionService._decide_fresh = _constant
"""
NO_GC = "import gc\ngc.disable()\n"
QUIET = {"TIERGATE_DECISION_LOG_DENIES": "false"}
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "full": ("", {}),
    "no_deny_lines": ("", QUIET),
    "no_policy": (NO_POLICY, QUIET),
    "no_decision": (NO_DECISION, QUIET),
    "no_gc": (NO_GC, {}),  # not in the default set: the collector switched off, for comparison
}
DEFAULT_VARIANTS = ("full", "no_deny_lines", "no_policy", "no_decision")


def start_sidecar(replica: Path, prelude: str, extra: dict[str, str], log: Path) -> tuple[Any, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")} | {
        "TIERGATE_SIDECAR_HOST": "127.0.0.1",
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_REPLICA_PATH": str(replica),
        "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(REPO / "policies"),
        "TIERGATE_LOG_JSON": "true",
        "TIERGATE_DECISION_LOG_SAMPLE": "0",
        "TIERGATE_OUTBOX_PATH": str(log.with_suffix(f".{port}.outbox.db")),
        "PYTHONPATH": str(REPO),
        **extra,
    }
    code = f"{prelude}\nimport sys\nsys.argv = ['tiergate', 'sidecar']\nfrom tiergate.cli import main\nmain()"
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/healthz", process, log, 180)
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replica", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--logs", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    generator = pick_generator("wrk", False, None)
    names = [n for n in args.variants.split(",") if n]
    lines = sum(1 for _ in args.requests.open())
    figures: dict[str, list[float]] = {name: [] for name in [*names, "baseline"]}
    for n in range(args.rounds):
        offset = random.Random(n).randrange(lines)
        for name in names if n % 2 == 0 else names[::-1]:
            prelude, extra = VARIANTS[name]
            process, url = start_sidecar(
                args.replica, prelude, extra, args.logs / f"miss-ablation-{name}.log"
            )
            try:
                generator.run(url, args.requests, 1, 1.0, offset=(offset + lines // 2) % lines)
                before = cpu_seconds(process.pid)
                run = generator.run(url, args.requests, 32, args.duration, offset=offset)
                figures[name].append((cpu_seconds(process.pid) - before) * 1e6 / run["requests"])
            finally:
                stop(process)
            print(
                f"round {n + 1} {name:<14} {figures[name][-1]:6.1f} µs/req  load {load_average():.1f}",
                flush=True,
            )
        port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, str(BASELINE), "--port", str(port), "--loop", "uvloop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url + "/healthz", baseline, Path(os.devnull))
            generator.run(url, args.requests, 1, 1.0, offset=0)
            before = cpu_seconds(baseline.pid)
            run = generator.run(url, args.requests, 32, args.duration, offset=offset)
            figures["baseline"].append((cpu_seconds(baseline.pid) - before) * 1e6 / run["requests"])
        finally:
            stop(baseline)
        print(f"round {n + 1} {'baseline':<14} {figures['baseline'][-1]:6.1f} µs/req", flush=True)
    print("\nCPU µs a request at 32 connections, median of the rounds:")
    for name, values in figures.items():
        print(f"  {name:<14} {statistics.median(values):6.1f}  ({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
