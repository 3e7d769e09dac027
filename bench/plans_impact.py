"""`tiergate plans diff --impact` over a synthetic replica of N tenants (prints figures; asserts nothing).

The replica mixes free tenants without an account (each with usage this month) and accounts on
every paid tier and status, with billing periods anchored at random seconds (the memo of
identical policy inputs gets no help from shared periods). The candidate catalog lowers Pro's
`api_calls`, drops `reports` from Starter, adds `sso` to Starter and raises Pro's monthly price.
Baseline in the same run: the same report with the candidate equal to the live catalog.

    .venv/bin/python bench/plans_impact.py [--tenants 100000] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from tiergate.models import Account, UsageCounter
from tiergate.periods import calendar_month
from tiergate.sidecar.decisions.impact import run_impact
from tiergate.sidecar.policy.bundle import load_bundle
from tiergate.sidecar.replica.store import ReplicaWriter, open_replica

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "plans_impact.json"
STATUSES = (
    ["active"] * 80
    + ["trialing"] * 8
    + ["past_due"] * 5
    + ["canceled"] * 4
    + ["unpaid", "paused", "incomplete"]
)
LIMITS = {"starter": 20_000, "pro": 100_000, "enterprise": 10**6}


def synthetic_replica(path: Path, tenants: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    month = calendar_month(now)[0]
    accounts: list[Account] = []
    usage: list[UsageCounter] = []
    for i in range(tenants):
        tenant = f"t{i:06d}"
        if rng.random() < 0.55:  # free, no account; usage this month (without any it is not in the replica)
            value = rng.randint(0, 1200)
            usage.append(UsageCounter(tenant=tenant, code="api_calls", period_start=month, value=value))
            continue
        tier = rng.choice(["starter", "starter", "pro", "pro", "enterprise"])
        status = rng.choice(STATUSES)
        start = now - timedelta(seconds=rng.randint(0, 29 * 86400))
        accounts.append(
            Account(
                tenant=tenant,
                tier=tier,
                status=status,
                current_period_start=start,
                current_period_end=start + timedelta(days=30),
                trial_end=now + timedelta(days=rng.randint(-5, 10)) if status == "trialing" else None,
                past_due_since=now - timedelta(days=rng.randint(0, 20)) if status == "past_due" else None,
            )
        )
        used = rng.randint(0, int(LIMITS[tier] * 1.2))
        usage.append(UsageCounter(tenant=tenant, code="api_calls", period_start=start, value=used))
    db = open_replica(path)
    ReplicaWriter(db).replace_all(accounts, usage, data_as_of=now)
    db.close()


def candidate_catalog(path: Path) -> None:
    plans = yaml.safe_load((REPO / "plans" / "plans.yaml").read_text(encoding="utf-8"))
    plans["tiers"]["pro"]["features"]["api_calls"] = {"limit": 50_000}
    plans["tiers"]["starter"]["features"]["reports"] = False
    plans["tiers"]["starter"]["features"]["sso"] = True
    plans["tiers"]["pro"]["prices"]["month"]["unit_amount"] = 5900
    path.write_text(yaml.safe_dump(plans), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        replica, candidate = Path(tmp) / "replica.db", Path(tmp) / "plans.yaml"
        started = time.perf_counter()
        synthetic_replica(replica, args.tenants)
        print(f"replica of {args.tenants:,} tenants written in {time.perf_counter() - started:.1f} s")
        candidate_catalog(candidate)
        live = load_bundle(REPO / "policies", REPO / "plans" / "plans.yaml")
        trial = load_bundle(REPO / "policies", candidate)
        baseline = run_impact(replica, live, live, workers=args.workers)
        report = run_impact(replica, live, trial, workers=args.workers)
    figures = {
        "tenants": report.tenants,
        "features": len(report.features),
        "workers": args.workers or "cpu_count",
        "seconds": round(report.seconds, 2),
        "cpu_seconds": round(report.cpu_seconds, 2),
        "baseline_unchanged_seconds": round(baseline.seconds, 2),
        "ratio_to_baseline": round(report.seconds / baseline.seconds, 2),
        "ratio_to_one_minute_budget": round(report.seconds / 60, 2),
        "changes": report.to_json()["features"],
    }
    for counts in figures["changes"].values():
        counts.pop("examples")
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
