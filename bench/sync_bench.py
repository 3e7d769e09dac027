"""Sync daemon and sidecar-follower figures, each against real processes; prints figures.

    .venv/bin/python bench/sync_bench.py webhooks   [--quick]   # intake throughput, signed events over HTTP
    .venv/bin/python bench/sync_bench.py visibility [--quick]   # webhook -> sidecar decision delay
    .venv/bin/python bench/sync_bench.py snapshot   [--quick]   # 1,000,000-tenant bootstrap time and RSS
    .venv/bin/python bench/sync_bench.py all        [--quick]

webhooks:   `customer.subscription.updated` events built from the Stripe fixtures (distinct ids,
            tenants spread, `created` increasing), signed with the real library, POSTed to
            `tiergate sync-daemon` over N concurrent keep-alive connections -> events/s, p50/p99.
visibility: daemon + sidecar; post a signed event changing one tenant's tier (starter <-> pro),
            poll the sidecar's GET /v1/check until the decision flips; the delay from just before
            the POST to the first flipped answer. The sidecar long-polls the feed: this is the feed.
snapshot:   a mirror filled with N accounts straight through tiergate.sync_daemon.mirror.store's schema (one bulk
            transaction), the daemon on it, then a fresh sidecar following it: time to /readyz 200,
            the snapshot download alone, and VmRSS/VmHWM of both after bootstrap and after load.

Results go to bench/results/sync_<name>.json. Nothing asserts on time. The load generator is
Python (aiohttp) on the same machine: it competes with the servers for the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import random
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from harness import REPO, RESULTS, Server, free_port, machine, percentiles_ms, spawn, table, tiergate_command

from tests.stripe_payloads import SECRET, signed, subscription_event
from tiergate.periods import rfc3339
from tiergate.sync_daemon.mirror.sqlite import SqliteMirror as Mirror
from tiergate.sync_daemon.mirror.store import MirrorAccount

TOKEN = "bench-feed-token"
UNREACHABLE_STRIPE = "http://127.0.0.1:9"  # nothing the daemon needs from Stripe in these runs
TIERS = {"starter": "starter_month", "pro": "pro_month"}
VISIBILITY_TARGET_P99_MS = 1000.0
RSS_TARGET_MB = 300.0


# -- processes -------------------------------------------------------------------------------


def daemon_env(mirror: Path, port: int) -> dict[str, str]:
    """A benchmark daemon's settings: Stripe unreachable, no reconcile, the sample catalog."""
    return {
        "TIERGATE_STRIPE_API_KEY": "sk_test_bench",
        "TIERGATE_STRIPE_API_BASE": UNREACHABLE_STRIPE,
        "TIERGATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "TIERGATE_STRIPE_MAX_NETWORK_RETRIES": "0",
        "TIERGATE_FEED_TOKEN": TOKEN,
        "TIERGATE_MIRROR_PATH": str(mirror),
        "TIERGATE_DAEMON_PORT": str(port),
        "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_RECONCILE_INTERVAL_S": "86400",
    }


def start_daemon(tmp: Path, mirror: Path) -> Server:
    port = free_port()
    env = daemon_env(mirror, port)
    server = spawn("daemon", tiergate_command("sync-daemon"), env, tmp, f"http://127.0.0.1:{port}")
    server.wait("/healthz")
    return server


def start_sidecar(tmp: Path, daemon: Server, replica: Path, **extra: str) -> Server:
    port = free_port()
    env = {
        "TIERGATE_DAEMON_URL": daemon.url,
        "TIERGATE_FEED_TOKEN": TOKEN,
        "TIERGATE_REPLICA_PATH": str(replica),
        "TIERGATE_SIDECAR_PORT": str(port),
        "TIERGATE_PLANS": str(REPO / "plans" / "plans.yaml"),
        "TIERGATE_POLICIES": str(REPO / "policies"),
        "TIERGATE_DECISION_LOG_SAMPLE": "0",
        "TIERGATE_DECISION_LOG_DENIES": "false",
        **extra,
    }
    return spawn("sidecar", tiergate_command("sidecar"), env, tmp, f"http://127.0.0.1:{port}")


# -- figures ---------------------------------------------------------------------------------


def write(name: str, figures: dict[str, Any]) -> Path:
    """bench/results/sync_NAME.json; a --quick run's figures go to the temporary directory."""
    folder = Path(tempfile.gettempdir()) if figures.get("quick") else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sync_{name}.json"
    path.write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
    return path


# -- signed events ---------------------------------------------------------------------------

_NOW = int(time.time())
PERIOD = {"current_period_start": _NOW - 10 * 86400, "current_period_end": _NOW + 20 * 86400}


def tier_event(event_id: str, tenant: str, tier: str, created: int, quantity: int = 1) -> dict[str, Any]:
    """A `customer.subscription.updated` fixture put on `tenant`, at `tier`, ordered by `created`."""
    event = subscription_event(
        "customer.subscription.updated.upgrade",
        event_id=event_id,
        created=created,
        tenant=tenant,
        lookup_key=TIERS[tier],
        quantity=quantity,
        status="active",
        id=f"sub_bench_{tenant}",
        customer=f"cus_bench_{tenant}",
    )
    event["data"]["object"]["items"]["data"][0].update(PERIOD)
    return event


_created = iter(range(_NOW - 10 * 86400, _NOW))  # one clock for every run: no same-second ties


def signed_intake_events(
    n: int, tenants: int, rng: random.Random, prefix: str
) -> list[tuple[bytes, dict[str, str]]]:
    """n signed events with distinct ids, tenants spread, `created` increasing across all runs."""
    out = []
    for i in range(n):
        tenant = f"t_{rng.randrange(tenants):06d}"
        event = tier_event(f"evt_{prefix}_{i:08d}", tenant, rng.choice(list(TIERS)), next(_created))
        raw, headers = signed(event)
        out.append((raw.encode(), headers))
    return out


# -- (a) webhook intake throughput -------------------------------------------------------------


async def post_all(
    url: str, events: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> tuple[float, list[float], dict[str, int]]:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    queue = iter(events)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for raw, headers in queue:
                started = time.perf_counter()
                async with session.post(url, data=raw, headers=headers) as response:
                    body = await response.json()
                latencies.append(time.perf_counter() - started)
                key = body.get("outcome") if response.status == 200 else f"http_{response.status}"
                outcomes[str(key)] = outcomes.get(str(key), 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies, outcomes


def bench_webhooks(quick: bool) -> dict[str, Any]:
    levels = [1, 8] if quick else [1, 8, 32, 64]
    per_level = 500 if quick else 5000
    tenants = 1000 if quick else 10_000
    rng = random.Random(3)
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="tiergate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        daemon = start_daemon(tmp, tmp / "mirror.db")
        try:
            url = daemon.url + "/webhooks/stripe"
            asyncio.run(post_all(url, signed_intake_events(200, tenants, rng, "warm"), 4))
            for level in levels:
                events = signed_intake_events(per_level, tenants, rng, f"c{level}")
                elapsed, latencies, outcomes = asyncio.run(post_all(url, events, level))
                figures = {
                    "concurrency": level,
                    "events": per_level,
                    "events_per_s": round(per_level / elapsed, 1),
                    **percentiles_ms(latencies),
                    "outcomes": outcomes,
                }
                results.append(figures)
                rows.append(
                    [
                        level,
                        per_level,
                        figures["events_per_s"],
                        figures["p50_ms"],
                        figures["p99_ms"],
                        ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())),
                    ]
                )
            rss = daemon.rss_mb()
        finally:
            daemon.stop()
    table(
        "(a) webhook intake: signed customer.subscription.updated over HTTP -> tiergate sync-daemon",
        ["connections", "events", "events/s", "p50 ms", "p99 ms", "outcomes"],
        rows,
    )
    print(f"daemon RSS after the run: {rss}")
    figures = {"quick": quick, "tenants": tenants, "levels": results, "daemon_rss_mb": rss}
    print(f"wrote {write('webhooks', figures)}")
    return figures


# -- (b) webhook -> sidecar decision visibility ---------------------------------------------------


async def measure_visibility(
    daemon: Server, sidecar: Server, rounds: int, tenants: int
) -> tuple[list[float], list[float]]:
    visible: list[float] = []
    acked: list[float] = []
    tier_of = {f"v_{i:04d}": "starter" for i in range(tenants)}
    created = _NOW - 86400
    async with aiohttp.ClientSession() as session:
        # Put every tenant on starter first, and wait until the sidecar sees the last one.
        for i, tenant in enumerate(tier_of):
            raw, headers = signed(tier_event(f"evt_vis_init_{i}", tenant, "starter", created))
            async with session.post(daemon.url + "/webhooks/stripe", data=raw, headers=headers) as r:
                assert r.status == 200, await r.text()
        for tenant in tier_of:
            while await tier_seen(session, sidecar, tenant) != "starter":  # noqa: ASYNC110 - polling HTTP
                await asyncio.sleep(0.01)
        rng = random.Random(5)
        for n in range(rounds):
            tenant = rng.choice(list(tier_of))
            new = "pro" if tier_of[tenant] == "starter" else "starter"
            created += 1
            raw, headers = signed(tier_event(f"evt_vis_{n}", tenant, new, created))
            started = time.perf_counter()
            async with session.post(daemon.url + "/webhooks/stripe", data=raw, headers=headers) as r:
                assert r.status == 200, await r.text()
                await r.read()
            acked.append(time.perf_counter() - started)
            deadline = started + 30
            while await tier_seen(session, sidecar, tenant) != new:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"round {n}: {tenant} never became {new}\n{sidecar.tail()}")
            visible.append(time.perf_counter() - started)
            tier_of[tenant] = new
            await asyncio.sleep(rng.uniform(0.0, 0.05))  # let the follower go back to waiting
    return acked, visible


async def tier_seen(session: aiohttp.ClientSession, sidecar: Server, tenant: str) -> str:
    params = {"tenant": tenant, "feature": "sso"}
    async with session.get(sidecar.url + "/v1/check", params=params) as response:
        body = await response.json()
    return str(body["tier"])


def bench_visibility(quick: bool) -> dict[str, Any]:
    rounds = 40 if quick else 200
    with tempfile.TemporaryDirectory(prefix="tiergate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        daemon = start_daemon(tmp, tmp / "mirror.db")
        sidecar = start_sidecar(tmp, daemon, tmp / "replica.db")
        try:
            sidecar.wait("/readyz")
            acked, visible = asyncio.run(measure_visibility(daemon, sidecar, rounds, tenants=20))
        finally:
            sidecar.stop()
            daemon.stop()
    ack, vis = percentiles_ms(acked), percentiles_ms(visible)
    table(
        "(b) webhook -> sidecar decision visibility (daemon + sidecar processes, sidecar long-polls the feed)",
        ["measure", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            [
                "webhook POST answered (committed)",
                ack["n"],
                ack["p50_ms"],
                ack["p90_ms"],
                ack["p99_ms"],
                ack["max_ms"],
            ],
            [
                "decision flipped on the sidecar",
                vis["n"],
                vis["p50_ms"],
                vis["p90_ms"],
                vis["p99_ms"],
                vis["max_ms"],
            ],
        ],
    )
    ok = vis["p99_ms"] < VISIBILITY_TARGET_P99_MS
    print(f"target p99 < {VISIBILITY_TARGET_P99_MS:.0f} ms: {'met' if ok else 'MISSED'}")
    figures = {"quick": quick, "rounds": rounds, "webhook_ack": ack, "visible": vis, "target_met": ok}
    print(f"wrote {write('visibility', figures)}")
    return figures


# -- (c) snapshot bootstrap ----------------------------------------------------------------------


def fill_mirror(path: Path, n: int) -> float:
    """n accounts in the mirror's own schema (migrated by tiergate.sync_daemon.mirror.store), in one transaction."""
    started = time.perf_counter()

    async def migrate() -> None:
        mirror = Mirror(path)
        await mirror.open()
        await mirror.close()

    asyncio.run(migrate())
    now = datetime.now(UTC)
    statuses = ["active"] * 8 + ["trialing", "past_due"]
    template = MirrorAccount(
        tenant="",
        tier="pro",
        status="active",
        stripe_customer_id="",
        subscription_id="",
        interval="month",
        quantity=1,
        current_period_start=now - timedelta(days=10),
        current_period_end=now + timedelta(days=20),
        stripe_updated=int(now.timestamp()),
        version=1,
    ).row()
    columns = list(template)
    rng = random.Random(7)

    def rows() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            row = dict(template)
            row["tenant"] = f"tenant-{i:07d}"
            row["stripe_customer_id"] = f"cus_{i:07d}"
            row["subscription_id"] = f"sub_{i:07d}"
            row["tier"] = rng.choice(("starter", "pro", "pro", "enterprise"))
            row["status"] = rng.choice(statuses)
            row["quantity"] = rng.randint(1, 20)
            if row["status"] == "trialing":
                row["trial_end"] = rfc3339(now + timedelta(days=3))
            yield tuple(row[c] for c in columns)

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.executemany(
        f"INSERT INTO accounts ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows()
    )
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


async def download_snapshot(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    timeout = aiohttp.ClientTimeout(total=None)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url + "/v1/feed/snapshot", headers=headers) as response,
    ):
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
    return time.perf_counter() - started, size


async def check_load(url: str, tenants: int, requests: int, concurrency: int) -> list[float]:
    rng = random.Random(11)
    features = ("sso", "reports", "api_calls", "exports", "dashboards")
    latencies: list[float] = []
    remaining = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for _ in remaining:
                params = {"tenant": f"tenant-{rng.randrange(tenants):07d}", "feature": rng.choice(features)}
                started = time.perf_counter()
                async with session.get(url + "/v1/check", params=params) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def profile_stream(mirror_path: Path, top: int = 18) -> str:
    """cProfile of the daemon's side: Mirror.snapshot() records -> orjson lines (no HTTP)."""
    import orjson

    async def stream() -> int:
        mirror = Mirror(mirror_path)
        await mirror.open()
        size = 0
        try:
            async for record in mirror.snapshot():
                size += len(orjson.dumps(record)) + 1
        finally:
            await mirror.close()
        return size

    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(stream())
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def profile_apply(tmp: Path, daemon: Server, top: int = 18) -> str:
    """cProfile of the follower's snapshot apply (download once, then apply in process)."""
    from tiergate.sidecar.replica.follower import _apply_snapshot
    from tiergate.sidecar.replica.store import ReplicaWriter, open_replica

    path = tmp / "snapshot.ndjson"
    request = urllib.request.Request(
        daemon.url + "/v1/feed/snapshot", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=600) as response, path.open("wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    writer = ReplicaWriter(open_replica(tmp / "profiled-replica.db"))
    profiler = cProfile.Profile()
    profiler.enable()
    _apply_snapshot(writer, path)
    profiler.disable()
    writer.db.close()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def bench_snapshot(quick: bool, profile: bool) -> dict[str, Any]:
    n = 50_000 if quick else 1_000_000
    load_requests = 2_000 if quick else 20_000
    with tempfile.TemporaryDirectory(prefix="tiergate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        mirror = tmp / "mirror.db"
        fill_s = fill_mirror(mirror, n)
        print(
            f"filled the mirror with {n:,} accounts in {fill_s:.1f} s ({mirror.stat().st_size / 2**20:.0f} MB)"
        )
        daemon = start_daemon(tmp, mirror)
        try:
            daemon_idle = daemon.rss_mb()
            download_s, size = asyncio.run(download_snapshot(daemon.url))
            print(f"snapshot download alone: {download_s:.1f} s, {size / 2**20:.0f} MB NDJSON")
            daemon_after_snapshot = daemon.rss_mb()
            sidecar = start_sidecar(tmp, daemon, tmp / "replica.db")
            try:
                bootstrap_s = sidecar.wait("/readyz", timeout_s=1800)
                after_bootstrap = sidecar.rss_mb()
                latencies = asyncio.run(check_load(sidecar.url, n, load_requests, 16))
                after_load = sidecar.rss_mb()
            finally:
                sidecar.stop()
            restarted = start_sidecar(tmp, daemon, tmp / "replica.db")
            try:
                restart_s = restarted.wait("/readyz")
                restart_rss = restarted.rss_mb()
            finally:
                restarted.stop()
            report = profile_apply(tmp, daemon) if profile else None
        finally:
            daemon.stop()
        stream_report = profile_stream(mirror) if profile else None
        replica_mb = round((tmp / "replica.db").stat().st_size / 2**20, 1)
    load = percentiles_ms(latencies)
    rows = [
        ["accounts in the mirror", f"{n:,}"],
        ["snapshot download alone (daemon streaming)", f"{download_s:.1f} s, {size / 2**20:.0f} MB"],
        ["fresh sidecar: spawn -> /readyz 200", f"{bootstrap_s:.1f} s"],
        [
            "sidecar VmRSS / VmHWM after bootstrap",
            f"{after_bootstrap['VmRSS']} / {after_bootstrap['VmHWM']} MB",
        ],
        [
            f"sidecar VmRSS / VmHWM after {load_requests:,} checks",
            f"{after_load['VmRSS']} / {after_load['VmHWM']} MB",
        ],
        ["checks under load (16 conns) p50 / p99", f"{load['p50_ms']} / {load['p99_ms']} ms"],
        [
            "restarted sidecar (own replica): spawn -> /readyz 200",
            f"{restart_s:.1f} s, VmRSS {restart_rss['VmRSS']} MB",
        ],
        [
            "daemon VmRSS idle / VmHWM after snapshots",
            f"{daemon_idle['VmRSS']} / {daemon_after_snapshot['VmHWM']} MB",
        ],
        ["replica file", f"{replica_mb} MB"],
    ]
    table("(c) snapshot bootstrap: a fresh sidecar following a daemon", ["measure", "value"], rows)
    peak = max(after_bootstrap["VmHWM"], after_load["VmHWM"])
    print(
        f"target sidecar RSS < {RSS_TARGET_MB:.0f} MB (peak {peak} MB): {'met' if peak < RSS_TARGET_MB else 'MISSED'}"
    )
    if report and stream_report:
        print("\nprofile of the daemon's snapshot stream (Mirror.snapshot -> orjson), by own time:")
        print(stream_report)
        print(
            "\nprofile of the follower's snapshot apply (tiergate.sidecar.replica.follower._apply_snapshot), by own time:"
        )
        print(report)
    figures = {
        "quick": quick,
        "accounts": n,
        "fill_s": round(fill_s, 1),
        "snapshot_download_s": round(download_s, 2),
        "snapshot_bytes": size,
        "bootstrap_to_ready_s": round(bootstrap_s, 2),
        "sidecar_rss_after_bootstrap_mb": after_bootstrap,
        "sidecar_rss_after_load_mb": after_load,
        "load": {"requests": load_requests, "concurrency": 16, **load},
        "restart_to_ready_s": round(restart_s, 2),
        "restart_rss_mb": restart_rss,
        "daemon_rss_idle_mb": daemon_idle,
        "daemon_rss_after_snapshot_mb": daemon_after_snapshot,
        "replica_mb": replica_mb,
        "rss_target_met": peak < RSS_TARGET_MB,
        "profile_daemon_stream": stream_report,
        "profile_follower_apply": report,
    }
    print(f"wrote {write('snapshot', figures)}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["webhooks", "visibility", "snapshot", "all"])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument("--profile", action="store_true", help="snapshot: cProfile the follower's apply")
    args = parser.parse_args()
    if args.which in ("webhooks", "all"):
        bench_webhooks(args.quick)
    if args.which in ("visibility", "all"):
        bench_visibility(args.quick)
    if args.which in ("snapshot", "all"):
        bench_snapshot(args.quick, args.profile)


if __name__ == "__main__":
    main()
