"""A credit-priced check against a metered check, same process, same run (issue 24's bar: within 1.2x).

Both go through the sidecar's real decision path in process: the replica's in-memory index, the
usage ledger's overlay, the input document (for credits: the exact checks of tiergate/sidecar/
decisions/credits_input.py) and the embedded Rego engine. The decision cache is off (every check
is evaluated: the work credits add is all there) and, separately, on (what a repeated check costs).
Rounds alternate between the two kinds; the ratio printed is the median of the per-round ratios.

    .venv/bin/python bench/credits_check.py [--tenants 1000] [--checks 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from tiergate.catalog import load_catalog
from tiergate.feed import FeedCreditGrant, FeedCredits
from tiergate.models import Account
from tiergate.policy.bundle import load_bundle
from tiergate.policy.embedded import EmbeddedEngine
from tiergate.sidecar.decisions.cache import DecisionCache
from tiergate.sidecar.decisions.service import DecisionService
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.replica.store import ReplicaReader, ReplicaWriter, open_replica
from tiergate.sidecar.usage.ledger import UsageLedger

ROOT = Path(__file__).parents[1]
PLANS = ROOT / "tests" / "integration" / "credits" / "plans.yaml"
NOW = datetime(2026, 12, 8, tzinfo=UTC)


def replica(path: Path, tenants: list[str]) -> None:
    accounts = [
        Account(
            tenant=t,
            tier="pro",
            status="active",
            current_period_start=NOW - timedelta(days=3),
            current_period_end=NOW + timedelta(days=27),
        )
        for t in tenants
    ]
    credits = [
        FeedCredits(
            tenant=t,
            credit_type="ai_credits",
            grants=[
                FeedCreditGrant(
                    remaining=Decimal("750.5"),
                    effective_at=NOW - timedelta(days=3),
                    expires_at=NOW + timedelta(days=27),
                ),
                FeedCreditGrant(remaining=5000, effective_at=NOW - timedelta(days=30)),
            ],
        )
        for t in tenants
    ]
    ReplicaWriter(open_replica(path)).replace_all(accounts, [], data_as_of=NOW, position=0, credits=credits)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replica.db"
        tenants = [f"t{i}" for i in range(args.tenants)]
        replica(path, tenants)
        reader = ReplicaReader(path)
        engine = EmbeddedEngine(compiled=True)
        await engine.load(load_bundle(ROOT / "policies", PLANS))
        catalog = load_catalog(PLANS)

        def service(cache_size: int) -> DecisionService:
            made = DecisionService(
                reader,
                engine,
                SidecarMetrics(replica_age=lambda: 0.0),
                cache=DecisionCache(cache_size, ttl_s=3600.0),
                ledger=UsageLedger(),
                log_sample=0.0,
                log_denies=False,
                clock=lambda: NOW.timestamp(),
            )
            made.catalog = lambda: catalog
            return made

        rng = random.Random(24)
        sample = [rng.choice(tenants) for _ in range(args.checks)]
        for label, cache_size in (("evaluated (cache off)", 0), ("cached", 100_000)):
            decisions = service(cache_size)
            assert (await decisions.decide("t0", "gpt4_tokens", 10)).credits is not None
            assert (await decisions.decide("t0", "api_calls")).allow
            ratios: list[float] = []
            per_check: dict[str, list[float]] = {"api_calls": [], "gpt4_tokens": []}
            for _ in range(args.rounds):
                spent = {}
                for feature in ("api_calls", "gpt4_tokens"):
                    started = time.perf_counter()
                    for tenant in sample:
                        await decisions.decide_json(tenant, feature, 1)
                    spent[feature] = time.perf_counter() - started
                    per_check[feature].append(spent[feature] / len(sample) * 1e6)
                ratios.append(spent["gpt4_tokens"] / spent["api_calls"])
            print(
                f"{label:<22} metered {statistics.median(per_check['api_calls']):7.1f} µs/check, "
                f"credit-priced {statistics.median(per_check['gpt4_tokens']):7.1f} µs/check, "
                f"ratio credit/metered median {statistics.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
