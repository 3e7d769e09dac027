"""The decision service's miss path, piece by piece, in process (prints µs a call).

    .venv/bin/python bench/miss_breakdown.py --replica /path/replica.db [--keys 20000]

Builds the sidecar's own app on an existing replica (e.g. one `bench/sidecar_latency.py` or
`tiergate replica import` made), draws `--keys` (tenant, feature) pairs uniformly over every
tenant, and times, over those same keys: the whole miss (`decide_json` on a service with no
cache), then each piece of it alone. Each figure is the mean over the fastest of `--blocks` passes
over the keys (CPU time of this thread), so a shared machine's preemptions mostly drop out.
Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FEATURES = ("api_calls", "reports", "sso", "exports", "dashboards")


def fastest_sync(call: Callable[[int], object], n: int, blocks: int) -> float:
    best = float("inf")
    for _ in range(blocks):
        started = time.thread_time_ns()
        for i in range(n):
            call(i)
        best = min(best, (time.thread_time_ns() - started) / n / 1000)
    return round(best, 2)


async def fastest_async(call: Callable[[int], Awaitable[object]], n: int, blocks: int) -> float:
    best = float("inf")
    for _ in range(blocks):
        started = time.thread_time_ns()
        for i in range(n):
            await call(i)
        best = min(best, (time.thread_time_ns() - started) / n / 1000)
    return round(best, 2)


def features_together(engine: Any, document: dict[str, Any], blocks: int) -> dict[str, float]:
    """One tenant's five features: five VM evaluations, or one evaluation of a rule that asks the
    decision for each (`with input.feature as f`: the VM's compiler refuses `with`, so the
    interpreter), checked to give the same answers."""
    import orjson
    import regorus

    from tiergate.policy.engine import DECISION_PATH

    bundle = engine._loaded.bundle
    together = (
        "package tiergate.together\nimport rego.v1\n"
        "decisions := {f: d | some f in input.features; "
        "d := data.tiergate.entitlements.decision with input.feature as f}\n"
    )
    interpreter = regorus.Engine()
    for name, source in sorted({**bundle.modules, "together.rego": together}.items()):
        interpreter.add_policy(name, source)
    interpreter.add_data({"plans": dict(bundle.plans)})
    vm = engine._loaded.vms[DECISION_PATH]
    each = [orjson.dumps(document | {"feature": f}).decode() for f in FEATURES]
    all_at_once = orjson.dumps(document | {"features": list(FEATURES)}).decode()
    interpreter.set_input_json(all_at_once)
    answers = interpreter.eval_rule("data.tiergate.together.decisions")
    for feature, text in zip(FEATURES, each, strict=True):
        vm.set_input_json(text)
        if orjson.loads(vm.execute_entry_point(DECISION_PATH)) != answers[feature]:
            raise SystemExit(f"the rule over all features answers {feature} differently")

    def separately(_: int) -> None:
        for text in each:
            vm.set_input_json(text)
            vm.execute_entry_point(DECISION_PATH)

    def at_once(_: int) -> None:
        interpreter.set_input_json(all_at_once)
        interpreter.eval_rule("data.tiergate.together.decisions")

    return {
        "five features, five VM evaluations": fastest_sync(separately, 500, blocks),
        "five features, one interpreter evaluation": fastest_sync(at_once, 200, blocks),
    }


async def breakdown(replica: Path, keys_n: int, blocks: int, seed: int, together: bool) -> dict[str, float]:
    import orjson
    from aiohttp import web

    from tiergate.log import configure_logging
    from tiergate.policy import document as policy_document
    from tiergate.policy.engine import DECISION_PATH
    from tiergate.sidecar.app import create_app
    from tiergate.sidecar.decisions import policy_io
    from tiergate.sidecar.decisions.cache import DecisionCache, Materialised
    from tiergate.sidecar.decisions.service import DecisionService
    from tiergate.sidecar.metrics import SidecarMetrics
    from tiergate.sidecar.settings import SidecarSettings
    from tiergate.sidecar.state import POLICIES, READER
    from tiergate.sidecar.usage.ledger import UsageLedger

    os.environ.update(
        {
            "TIERGATE_REPLICA_PATH": str(replica),
            "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
            "TIERGATE_POLICIES": str(REPO / "policies"),
            "TIERGATE_LOG_JSON": "true",
            "TIERGATE_DECISION_LOG_SAMPLE": "0",
        }
    )
    settings = SidecarSettings()
    sink = Path(os.devnull).open("wb")  # noqa: ASYNC230, SIM115 - closed below
    configure_logging(json=True, level=settings.log_level, sink=sink)  # deny lines: rendered, not kept
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        app = runner.app
        reader, engine = app[READER], app[POLICIES].engine
        rng = random.Random(seed)
        # bench/sidecar_latency.py's replicas name their tenants t_000000, t_000001, ...
        tenants = [f"t_{i:06d}" for i in range(reader.count_accounts())]
        keys = [(rng.choice(tenants), rng.choice(FEATURES)) for _ in range(keys_n)]
        uncached = DecisionService(
            reader,
            engine,
            SidecarMetrics(replica_age=lambda: 0.0),
            cache=DecisionCache(0, 0.0),
            ledger=UsageLedger(),
            log_sample=0.0,
            log_denies=settings.decision_log_denies,
        )
        quiet = DecisionService(
            reader,
            engine,
            SidecarMetrics(replica_age=lambda: 0.0),
            cache=DecisionCache(0, 0.0),
            ledger=UsageLedger(),
            log_sample=0.0,
            log_denies=False,
        )
        now = time.time()
        when = datetime.fromtimestamp(now, UTC)
        now_text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        rows = [reader.account(t) for t, _ in keys]
        periods = [policy_io.period_for(r, when, now_text) for r in rows]
        usages = [reader.usage(t, p[0]) for (t, _), p in zip(keys, periods, strict=True)]
        accounts = [policy_io.account_document(r) for r in rows]
        overrides = [reader.overrides(t) for t, _ in keys]

        def document(i: int) -> dict[str, Any]:
            tenant, feature = keys[i]
            return policy_document.build_input(
                tenant=tenant,
                feature=feature,
                quantity=1,
                now_text=now_text,
                account=accounts[i],
                usage=usages[i],
                period=periods[i],
                replica_age_s=None,
                overrides=overrides[i],
            )

        documents = [document(i) for i in range(keys_n)]
        inputs = [orjson.dumps(d).decode() for d in documents]
        await engine.evaluate(DECISION_PATH, documents[0])  # compiles the VM program
        loaded = getattr(engine, "_loaded", None)  # the embedded engine's VM: the bench reaches in
        if loaded is None or DECISION_PATH not in loaded.vms:
            raise SystemExit("this needs the embedded engine on its compiled VM (the default)")
        vm = loaded.vms[DECISION_PATH]
        outputs = []
        for text in inputs:
            vm.set_input_json(text)
            outputs.append(vm.execute_entry_point(DECISION_PATH))
        raw = [orjson.loads(o) for o in outputs]
        answers = [policy_document.parse_answer(r) for r in raw]
        materialised = [Materialised.of(a) for a in answers]
        denies = sum(not a.allow for a in answers) / len(answers)
        cache = DecisionCache(None, 0.0, max_bytes=1 << 40)

        def set_input(i: int) -> None:
            vm.set_input_json(inputs[i])

        def set_and_run(i: int) -> None:
            vm.set_input_json(inputs[i])
            vm.execute_entry_point(DECISION_PATH)

        def put(i: int) -> None:
            tenant, feature = keys[i]
            cache.put(
                tenant, feature, 1, materialised[i], now=now, valid_until=None, stale=False, epoch=cache.epoch
            )

        figures: dict[str, float] = {
            "miss, whole (decide_json, deny lines to /dev/null)": await fastest_async(
                lambda i: uncached.decide_json(*keys[i]), keys_n, blocks
            ),
            "miss, whole, no deny lines": await fastest_async(
                lambda i: quiet.decide_json(*keys[i]), keys_n, blocks
            ),
            "_decide_fresh (input + policy + parse)": await fastest_async(
                lambda i: quiet._decide_fresh(*keys[i], 1, now, None),
                keys_n,
                blocks,
            ),
            "reader.account (index unpack)": fastest_sync(
                lambda i: reader.account(keys[i][0]), keys_n, blocks
            ),
            "period_for": fastest_sync(
                lambda i: policy_io.period_for(rows[i], when, now_text), keys_n, blocks
            ),
            "reader.usage (index unpack)": fastest_sync(
                lambda i: reader.usage(keys[i][0], periods[i][0]), keys_n, blocks
            ),
            "reader.overrides": fastest_sync(lambda i: reader.overrides(keys[i][0]), keys_n, blocks),
            "account_document": fastest_sync(lambda i: policy_io.account_document(rows[i]), keys_n, blocks),
            "build_input": fastest_sync(document, keys_n, blocks),
            "orjson.dumps(input)": fastest_sync(
                lambda i: orjson.dumps(documents[i]).decode(), keys_n, blocks
            ),
            "regorus set_input_json": fastest_sync(set_input, keys_n, blocks),
            "regorus set_input_json + execute_entry_point": fastest_sync(set_and_run, keys_n, blocks),
            "orjson.loads(result)": fastest_sync(lambda i: orjson.loads(outputs[i]), keys_n, blocks),
            "parse_answer": fastest_sync(lambda i: policy_document.parse_answer(raw[i]), keys_n, blocks),
            "Materialised.of": fastest_sync(lambda i: Materialised.of(answers[i]), keys_n, blocks),
            "expiry_epoch": fastest_sync(
                lambda i: policy_io.expiry_epoch(answers[i].valid_until), keys_n, blocks
            ),
            "cache.put": fastest_sync(put, keys_n, 1),
            "deny share": round(denies, 3),
            "input bytes (mean)": round(sum(map(len, inputs)) / len(inputs), 1),
        }
        deny_keys = [key for key, answer in zip(keys, answers, strict=True) if not answer.allow]
        if deny_keys:
            figures["deny misses only, with their lines"] = await fastest_async(
                lambda i: uncached.decide_json(*deny_keys[i]), len(deny_keys), blocks
            )
            figures["deny misses only, no lines"] = await fastest_async(
                lambda i: quiet.decide_json(*deny_keys[i]), len(deny_keys), blocks
            )
            body = await uncached.decide_json(*deny_keys[0])
            figures["a deny line alone (_log_rendered)"] = fastest_sync(
                lambda i: uncached._log_rendered(body), len(deny_keys), blocks
            )
        if together:
            figures |= features_together(engine, documents[0], blocks)
        figures["regorus execute_entry_point (difference)"] = round(
            figures["regorus set_input_json + execute_entry_point"] - figures["regorus set_input_json"], 2
        )
        return figures
    finally:
        await runner.cleanup()
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replica", type=Path, required=True)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--together", action="store_true", help="also: a tenant's features in one evaluation")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    figures = asyncio.run(breakdown(args.replica, args.keys, args.blocks, args.seed, args.together))
    print(f"load average {os.getloadavg()[0]:.2f}; µs a call (CPU time, fastest of {args.blocks} passes)")
    for name, value in figures.items():
        print(f"  {name:<52} {value:8.2f}")


if __name__ == "__main__":
    main()
