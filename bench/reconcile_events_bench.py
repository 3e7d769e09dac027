"""What announcing reconciliation repairs costs: one run that repairs N tenants, with outbound
webhook endpoints configured (each repair enqueues `entitlements.changed` in its transaction)
against the same run without endpoints (no events), interleaved on fresh SQLite mirrors.

    .venv/bin/python bench/reconcile_events_bench.py [--tenants 20000] [--rounds 5]

Stripe is an in-process list of subscription objects (the fixtures, one per tenant): the figure
is the daemon's own work (translate, diff, write, enqueue), not the network (logs below warning
are dropped). Prints the median
seconds of each variant, their ratio and the load average; nothing asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `tests.stripe_payloads` builds the subscription objects
    sys.path.insert(0, str(REPO))

from tests.stripe_payloads import subscription_event  # noqa: E402
from tiergate.catalog import load_catalog  # noqa: E402
from tiergate.sync_daemon.metrics import DaemonMetrics  # noqa: E402
from tiergate.sync_daemon.mirror.backends import mirror_for  # noqa: E402
from tiergate.sync_daemon.outbound.delivery import Outbound  # noqa: E402
from tiergate.sync_daemon.stripe_sync.reconcile import Reconciler  # noqa: E402
from tiergate.sync_daemon.stripe_sync.translate import Translator  # noqa: E402

CATALOG = load_catalog(REPO / "plans" / "plans.yaml")


class ListedStripe:
    """The BillingSource port over a list: only `list_subscriptions` is used by a reconciliation."""

    def __init__(self, subscriptions: list[dict[str, Any]]) -> None:
        self.subscriptions = subscriptions

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        raise NotImplementedError

    async def fetch_subscription(self, subscription_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def fetch_customer(self, customer_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def list_subscriptions(self) -> AsyncIterator[dict[str, Any]]:
        for subscription in self.subscriptions:
            yield subscription

    async def close(self) -> None:
        return None


def subscriptions(n: int) -> list[dict[str, Any]]:
    template = subscription_event("customer.subscription.created", tenant="t_0", quantity=2)
    base: dict[str, Any] = template["data"]["object"]
    return [
        {**base, "id": f"sub_{i}", "customer": f"cus_{i}", "metadata": {"tenant_id": f"t_{i}"}}
        for i in range(n)
    ]


async def one_run(listed: list[dict[str, Any]], folder: Path, endpoints: list[str]) -> tuple[float, int]:
    """Seconds of one reconciliation repairing every listed tenant on an empty mirror; events queued."""
    mirror = mirror_for(f"sqlite:{folder / 'mirror.db'}")
    await mirror.open()
    try:
        outbound = Outbound(endpoints, CATALOG) if endpoints else None
        metrics = DaemonMetrics(feed_seq=lambda: 0.0)
        reconciler = Reconciler(mirror, ListedStripe(listed), Translator(CATALOG), metrics, outbound)
        started = time.perf_counter()
        summary = await reconciler.run()
        elapsed = time.perf_counter() - started
        assert summary.ok and summary.repairs == len(listed), summary
        queued = await mirror.read(
            lambda conn: conn.execute("SELECT count(*) FROM outbound_events").fetchone()[0]
        )
        return elapsed, int(queued)
    finally:
        await mirror.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Not one `mirror_drift` line per repair on the terminal: both variants log alike, unprinted.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    listed = subscriptions(args.tenants)
    times: dict[str, list[float]] = {"without endpoints": [], "with an endpoint": []}
    for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits both
        for name, endpoints in (("without endpoints", []), ("with an endpoint", ["http://127.0.0.1:9/hook"])):
            with tempfile.TemporaryDirectory() as tmp:
                elapsed, queued = asyncio.run(one_run(listed, Path(tmp), endpoints))
            assert queued == (args.tenants if endpoints else 0), queued
            times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"reconcile repairing {args.tenants} tenants, median of {args.rounds} rounds (load {os.getloadavg()})"
    )
    for name, median in medians.items():
        print(f"  {name:18} {median:7.2f} s   {[round(t, 2) for t in times[name]]}")
    ratio = medians["with an endpoint"] / medians["without endpoints"]
    print(f"  ratio with/without: {ratio:.2f}")


if __name__ == "__main__":
    main()
