"""The miss path's policy evaluation, in process: regorus (the embedded engine, VM and
interpreter) against the real OPA library (opa-golib-python-bindings), in the same run.

    PYTHONPATH=$PWD .venv/bin/python bench/engine_miss.py            # ~1 min
    PYTHONPATH=$PWD .venv/bin/python bench/engine_miss.py --quick    # a smoke run

Each engine loads the shipped bundle (policies/ and plans/plans.yaml) and evaluates
`data.tiergate.entitlements.decision` for the same input documents: every tier and subscription
status of the catalog, each check feature, usage under and over the limits, built with the
sidecar's own `build_input`. Every answer of the OPA library is compared with regorus's (the
same decision, or the run stops). It prints µs per evaluation (median of 5 rounds) and the ratio
to the embedded engine the sidecar runs by default (the VM), and writes
bench/results/engine_miss.json. Nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from harness import REPO, load_average

from tiergate.policy.bundle import load_bundle
from tiergate.policy.document import build_input
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECISION_PATH, PolicyBundle

RESULTS = REPO / "bench" / "results" / "engine_miss.json"
FEATURES = ("api_calls", "exports", "reports", "sso", "dashboards")
STATUSES = ("active", "trialing", "past_due", "canceled", "unpaid", "paused")
PERIOD = ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
NOW = "2026-12-08T02:00:00Z"


def documents(bundle: PolicyBundle, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Input documents as the sidecar builds them, over every tier and status of the catalog."""
    tiers = sorted(bundle.plans["tiers"])
    combos = list(itertools.product([None, *tiers], STATUSES, FEATURES))
    out = []
    for n in range(count):
        tier, status, feature = combos[n % len(combos)]
        account = None if tier is None else _account(tier, status)
        used = rng.choice((0, 1, 412, 999, 1000, 5000))
        out.append(
            build_input(
                tenant=f"t_{n}",
                feature=feature,
                quantity=rng.choice((1, 1, 1, 5)),
                now_text=NOW,
                account=account,
                usage={feature: used} if used else {},
                period=PERIOD,
                replica_age_s=0.5,
            )
        )
    return out


def _account(tier: str, status: str) -> dict[str, Any]:
    return {
        "tier": tier,
        "status": status,
        "quantity": 1,
        "current_period_start": PERIOD[0],
        "current_period_end": PERIOD[1],
        "trial_end": None,
        "cancel_at_period_end": False,
        "past_due_since": "2026-12-01T00:00:00Z" if status == "past_due" else None,
    }


def regorus_evaluator(bundle: PolicyBundle, *, compiled: bool) -> Callable[[dict[str, Any]], Any]:
    """The sidecar's EmbeddedEngine (JSON encoding of the input included, as on a miss)."""
    engine = EmbeddedEngine(compiled=compiled)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.load(bundle))

    def evaluate(document: dict[str, Any]) -> Any:
        coroutine = engine.evaluate(DECISION_PATH, document)
        try:  # evaluate never awaits: drive the coroutine by hand, as the event loop would
            coroutine.send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("EmbeddedEngine.evaluate suspended")

    return evaluate


def opa_evaluator(bundle: PolicyBundle) -> Callable[[dict[str, Any]], Any]:
    """The OPA Go library in process, through its Python bindings."""
    import opa_bindings

    engine = opa_bindings.OpaEngine()
    for name, source in bundle.modules.items():
        engine.add_policy(name, source)
    engine.add_data(dict(bundle.plans), "plans")
    path = DECISION_PATH.removeprefix("data.")
    return lambda document: engine.eval_document(path, document)


def time_per_call_us(evaluate: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]]) -> float:
    started = time.perf_counter_ns()
    for document in inputs:
        evaluate(document)
    return (time.perf_counter_ns() - started) / len(inputs) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.inputs, args.rounds = 500, 2
    bundle = load_bundle(REPO / "policies", REPO / "plans" / "plans.yaml")
    inputs = documents(bundle, args.inputs, random.Random(2))
    engines = {
        "regorus VM (default)": regorus_evaluator(bundle, compiled=True),
        "regorus interpreter": regorus_evaluator(bundle, compiled=False),
        "OPA library": opa_evaluator(bundle),
    }
    reference = [engines["regorus VM (default)"](d) for d in inputs]
    for name, evaluate in engines.items():
        differ = sum(
            orjson.dumps(evaluate(d), option=orjson.OPT_SORT_KEYS)
            != orjson.dumps(r, option=orjson.OPT_SORT_KEYS)
            for d, r in zip(inputs, reference, strict=True)
        )
        if differ:
            raise SystemExit(f"{name}: {differ} of {len(inputs)} decisions differ from regorus VM's")
    load_before = load_average()
    rounds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):  # interleaved, so that load on the machine hits every engine alike
        for name, evaluate in engines.items():
            rounds[name].append(time_per_call_us(evaluate, inputs))
    base = statistics.median(rounds["regorus VM (default)"])
    figures = {
        name: {
            "us_per_eval": round(statistics.median(times), 1),
            "x_vm": round(statistics.median(times) / base, 2),
        }
        for name, times in rounds.items()
    }
    print(f"{len(inputs)} input documents, {args.rounds} rounds; same decisions on every engine")
    print(f"{'engine':24} {'µs/eval':>8} {'x VM':>6}")
    for name, figure in figures.items():
        print(f"{name:24} {figure['us_per_eval']:8.1f} {figure['x_vm']:6.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "python": platform.python_version(), "load_before": load_before}
    args.output.write_text(
        json.dumps({"meta": meta, "inputs": len(inputs), "engines": figures}, indent=2) + "\n"
    )
    print(f"figures written to {args.output} (load average before: {load_before:.2f})")


if __name__ == "__main__":
    main()
