"""What a decision costs on each Rego engine the project can run in process (prints; asserts nothing).

    .venv/bin/python bench/engines.py            # 2,000 distinct inputs, 5 rounds
    .venv/bin/python bench/engines.py --quick    # 300 inputs, 2 rounds

A sidecar's miss is one evaluation of `data.tiergate.entitlements.decision` on the input document
it builds (tiergate/policy/document.py). This evaluates the shipped policies and catalog on the same
distinct inputs (every tier, feature and status of the catalog, usage below, at and over limits)
with:

* `regorus-vm`: regorus's compiled VM, the sidecar's default (`TIERGATE_ENGINE_VM=true`), and the
  baseline of each ratio;
* `regorus-interpreter`: regorus's tree-walking interpreter (`TIERGATE_ENGINE_VM=false`);
* `opa-go`: the real OPA v1 Go library in process, through opa-golib-python-bindings (installed by
  `make venv` from requirements/opa-reference.txt; dev-only).

Each engine answers the whole set once per round, in alternation (A, B, C, C, B, A, ...), and the
CPU per evaluation (process time, this process only: every engine runs on this thread) is divided
by `regorus-vm`'s in the same round. The answers of all engines are compared: a disagreement is
printed and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tiergate.policy.bundle import load_bundle
from tiergate.policy.document import build_input
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.policy.engine import DECISION_PATH, PolicyBundle

REPO = Path(__file__).resolve().parent.parent
STATUSES = ("active", "trialing", "past_due", "canceled", "unpaid")
Evaluate = Callable[[Mapping[str, Any]], Any]


def inputs(bundle: PolicyBundle, count: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` distinct documents over the catalog's tiers, features and statuses."""
    plans = bundle.plans
    tiers = sorted(plans["tiers"])
    features = sorted(bundle.catalog.features)
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        tier = tiers[index % len(tiers)]
        feature = features[(index // len(tiers)) % len(features)]
        limit = _limit(plans["tiers"][tier].get("features", {}).get(feature))
        used = rng.choice([0, 1, limit // 2, limit - 1, limit, limit + 5]) if limit else rng.randrange(0, 50)
        account = {
            "tier": tier,
            "status": rng.choice(STATUSES),
            "current_period_start": "2026-12-01T00:00:00Z",
            "current_period_end": "2027-01-01T00:00:00Z",
            "past_due_since": "2026-12-05T00:00:00Z",
            "add_ons": {},
        }
        documents.append(
            build_input(
                tenant=f"tenant-{index}",
                feature=feature,
                quantity=rng.choice([1, 1, 1, 5]),
                now_text="2026-12-08T12:00:00Z",
                account=account,
                usage={feature: max(used, 0)},
                period=("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
                replica_age_s=0.5,
            )
        )
    return documents


def _limit(value: object) -> int:
    if isinstance(value, dict) and isinstance(value.get("limit"), int):
        return int(value["limit"])
    return 0


def regorus(bundle: PolicyBundle, *, compiled: bool) -> Evaluate:
    engine = EmbeddedEngine(compiled=compiled, required=(DECISION_PATH,))
    asyncio.run(engine.load(bundle))

    def evaluate(document: Mapping[str, Any]) -> Any:
        step = engine.evaluate(DECISION_PATH, document)  # finishes without awaiting
        try:
            step.send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("the embedded engine awaited")

    return evaluate


def opa_go(bundle: PolicyBundle) -> Evaluate | None:
    try:
        import opa_bindings
    except ImportError:
        return None
    engine = opa_bindings.OpaEngine()
    for name, source in bundle.modules.items():
        engine.add_policy(name, source)
    engine.add_data(dict(bundle.plans), "plans")
    path = DECISION_PATH.removeprefix("data.")

    def evaluate(document: Mapping[str, Any]) -> Any:
        return engine.eval_document(path, input=document)

    return evaluate


def cpu_per_call(evaluate: Evaluate, documents: Sequence[Mapping[str, Any]]) -> float:
    started = time.process_time()
    for document in documents:
        evaluate(document)
    return (time.process_time() - started) / len(documents)


def disagreements(engines: Mapping[str, Evaluate], documents: Sequence[Mapping[str, Any]]) -> list[str]:
    found = []
    for document in documents:
        answers = {name: _comparable(evaluate(document)) for name, evaluate in engines.items()}
        if len(set(answers.values())) > 1:
            found.append(f"{document['account']['tier']}/{document['feature']}: {answers}")
    return found


def _comparable(answer: Any) -> str:
    return json.dumps(answer, sort_keys=True, default=str)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="300 inputs, 2 rounds")
    args = parser.parse_args()
    count, rounds = (300, 2) if args.quick else (args.inputs, args.rounds)
    bundle = load_bundle(REPO / "policies", REPO / "plans" / "plans.yaml")
    documents = inputs(bundle, count)
    engines: dict[str, Evaluate] = {
        "regorus-vm": regorus(bundle, compiled=True),
        "regorus-interpreter": regorus(bundle, compiled=False),
    }
    go = opa_go(bundle)
    if go is None:
        print("opa-go: opa-golib-python-bindings is not installed (make venv installs it); skipped")
    else:
        engines["opa-go"] = go
    wrong = disagreements(engines, documents)
    order = list(engines)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(rounds):
        sequence = order if round_index % 2 == 0 else order[::-1]
        for name in sequence:
            samples[name].append(cpu_per_call(engines[name], documents))
    print(f"{count} distinct inputs, {rounds} rounds; CPU per evaluation (median of rounds)")
    print(f"{'engine':<22}{'µs':>10}{'x regorus-vm':>16}")
    for name in order:
        ratios = [s / b for s, b in zip(samples[name], samples["regorus-vm"], strict=True)]
        micros = statistics.median(samples[name]) * 1e6
        print(f"{name:<22}{micros:>10.1f}{statistics.median(ratios):>16.2f}")
    for line in itertools.islice(wrong, 10):
        print("DISAGREE", line)
    print(f"answers compared on {count} inputs: {len(wrong)} disagreements")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
