"""Override -> sidecar decision visibility, against webhook -> sidecar visibility in the same run.

    .venv/bin/python bench/override_bench.py [--rounds N]

A daemon and a sidecar run as processes on 127.0.0.1. Each round either PUTs (or DELETEs) an
override of `sso` for a tenant on `starter` (no SSO) through the daemon's API, or posts a signed
Stripe event moving a tenant between starter and pro (the baseline: the path every Stripe change
takes), then polls the sidecar until its decision flips. Prints both distributions and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from sync_bench import (  # noqa: E402 - after the path set-up
    TOKEN,
    UNREACHABLE_STRIPE,
    Server,
    _spawn,
    percentiles_ms,
    start_sidecar,
    table,
    tier_event,
)

from demo.processes import free_port, tiergate_command  # noqa: E402
from tests.stripe_payloads import SECRET, signed  # noqa: E402

API_TOKEN = "bench-api-token-0001"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def start_daemon(tmp: Path) -> Server:
    port = free_port()
    env = {
        "TIERGATE_STRIPE_API_KEY": "sk_test_bench",
        "TIERGATE_STRIPE_API_BASE": UNREACHABLE_STRIPE,
        "TIERGATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "TIERGATE_STRIPE_MAX_NETWORK_RETRIES": "0",
        "TIERGATE_FEED_TOKEN": TOKEN,
        "TIERGATE_API_TOKEN": API_TOKEN,
        "TIERGATE_MIRROR_PATH": str(tmp / "mirror.db"),
        "TIERGATE_DAEMON_PORT": str(port),
        "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_RECONCILE_INTERVAL_S": "86400",
    }
    server = _spawn("daemon", tiergate_command("sync-daemon"), env, tmp, f"http://127.0.0.1:{port}")
    server.wait("/healthz")
    return server


async def allowed(session: aiohttp.ClientSession, sidecar: Server, tenant: str) -> bool:
    async with session.get(sidecar.url + "/v1/check", params={"tenant": tenant, "feature": "sso"}) as r:
        return bool((await r.json())["allow"])


async def flip(
    session: aiohttp.ClientSession, sidecar: Server, tenant: str, want: bool, started: float
) -> float:
    while await allowed(session, sidecar, tenant) is not want:
        if time.perf_counter() - started > 30:
            raise SystemExit(f"{tenant} never became allow={want}\n{sidecar.tail()}")
    return time.perf_counter() - started


async def measure(daemon: Server, sidecar: Server, rounds: int) -> tuple[list[float], list[float]]:
    overrides: list[float] = []
    webhooks: list[float] = []
    rng = random.Random(14)
    created = int(time.time()) - 86400
    tenants = [f"o_{i:03d}" for i in range(20)]
    granted = dict.fromkeys(tenants, False)  # sso via override (on starter)
    async with aiohttp.ClientSession() as session:
        for i, tenant in enumerate([*tenants, "w_0"]):
            raw, headers = signed(tier_event(f"evt_init_{i}", tenant, "starter", created))
            async with session.post(daemon.url + "/webhooks/stripe", data=raw, headers=headers) as r:
                assert r.status == 200, await r.text()
        await flip(session, sidecar, "w_0", False, time.perf_counter())
        pro = False
        for n in range(rounds):
            tenant = rng.choice(tenants)
            started = time.perf_counter()
            path = f"{daemon.url}/v1/tenants/{tenant}/overrides/sso"
            if granted[tenant]:
                async with session.delete(path, headers=AUTH) as r:
                    assert r.status == 200, await r.text()
            else:
                async with session.put(path, json={"value": True, "reason": "bench"}, headers=AUTH) as r:
                    assert r.status == 200, await r.text()
            granted[tenant] = not granted[tenant]
            overrides.append(await flip(session, sidecar, tenant, granted[tenant], started))
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            created += 1
            pro = not pro
            raw, headers = signed(tier_event(f"evt_bench_{n}", "w_0", "pro" if pro else "starter", created))
            started = time.perf_counter()
            async with session.post(daemon.url + "/webhooks/stripe", data=raw, headers=headers) as r:
                assert r.status == 200, await r.text()
            webhooks.append(await flip(session, sidecar, "w_0", pro, started))
            await asyncio.sleep(rng.uniform(0.0, 0.05))
    return overrides, webhooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=100)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="tiergate-bench-") as name:
        tmp = Path(name)
        daemon = start_daemon(tmp)
        sidecar = start_sidecar(tmp, daemon, tmp / "replica.db")
        try:
            sidecar.wait("/readyz")
            overrides, webhooks = asyncio.run(measure(daemon, sidecar, rounds))
        finally:
            sidecar.stop()
            daemon.stop()
    over, hook = percentiles_ms(overrides), percentiles_ms(webhooks)
    rows = [
        [label, f["n"], f["p50_ms"], f["p90_ms"], f["p99_ms"], f["max_ms"]]
        for label, f in (
            ("override PUT/DELETE -> decision", over),
            ("Stripe webhook -> decision (baseline)", hook),
        )
    ]
    table(
        "override visibility on a following sidecar",
        ["path", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        rows,
    )
    print(
        f"ratio override/baseline: p50 {over['p50_ms'] / hook['p50_ms']:.2f}, p99 {over['p99_ms'] / hook['p99_ms']:.2f}"
    )


if __name__ == "__main__":
    main()
