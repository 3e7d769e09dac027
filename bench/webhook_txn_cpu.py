"""Where a webhook's daemon CPU goes, in process, on SQLite and PostgreSQL (issue 12); prints figures.

    .venv/bin/python bench/webhook_txn_cpu.py [--events N] [--rounds N] [--profile] [--postgres URL]

No HTTP, no signature: `EventApplier.handle` on translated `customer.subscription.updated`
events (the shape bench/pg_bench.py posts), 16 at a time as the daemon's handlers would run them,
against a fresh mirror of each backend (PostgreSQL: a scratch database on the local server).
Per event: this process's CPU (all its threads, from /proc), wall time, and on PostgreSQL the
statements sent and the transactions run. Rounds are interleaved (SQLite, PostgreSQL, ...);
medians are printed with the load average. `--profile` also runs 300 events one at a time
on PostgreSQL under cProfile, the transaction bodies on the calling thread, and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from sync_bench import TIERS, tier_event  # noqa: E402

from tests import postgres_server  # noqa: E402
from tiergate.catalog import load_catalog  # noqa: E402
from tiergate.sync_daemon.metrics import DaemonMetrics  # noqa: E402
from tiergate.sync_daemon.mirror.backends import mirror_for  # noqa: E402
from tiergate.sync_daemon.mirror.store import Mirror, MirrorTxn  # noqa: E402
from tiergate.sync_daemon.outbound.delivery import Outbound  # noqa: E402
from tiergate.sync_daemon.stripe_sync.apply import EventApplier  # noqa: E402
from tiergate.sync_daemon.stripe_sync.translate import Translator  # noqa: E402

T = TypeVar("T")
CONCURRENCY = 16
TENANTS = 10_000
_CREATED = iter(range(int(time.time()) - 20 * 86400, int(time.time())))  # no ties, ever newer


class NoStripe:
    """The bench never asks Stripe (refetch is off)."""

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        raise AssertionError("not used")

    async def fetch_subscription(self, subscription_id: str) -> dict[str, Any]:
        raise AssertionError("not used")

    async def fetch_customer(self, customer_id: str) -> dict[str, Any]:
        raise AssertionError("not used")

    def list_subscriptions(self) -> AsyncIterator[dict[str, Any]]:
        raise AssertionError("not used")

    async def close(self) -> None:
        return None


class Counting:
    """Counts the round trips psycopg makes (statements, BEGIN and COMMIT) and the transactions run."""

    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        execute = psycopg.Cursor.execute
        command = psycopg.Connection._exec_command

        def counted_execute(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            self.statements += 1
            return execute(cursor, *args, **kwargs)

        def counted_command(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.statements += 1
            return command(conn, *args, **kwargs)

        setattr(psycopg.Cursor, "execute", counted_execute)  # noqa: B010 - patching on purpose
        setattr(psycopg.Connection, "_exec_command", counted_command)  # noqa: B010


def process_cpu_s() -> float:
    fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def events(n: int, rng: random.Random, prefix: str) -> list[dict[str, Any]]:
    return [
        tier_event(
            f"evt_{prefix}_{i}", f"t_{rng.randrange(TENANTS):06d}", rng.choice(list(TIERS)), next(_CREATED)
        )
        for i in range(n)
    ]


def applier(mirror: Mirror) -> EventApplier:
    translator = Translator(load_catalog(REPO / "plans" / "plans.yaml"), "tenant_id")
    metrics = DaemonMetrics(feed_seq=lambda: mirror.seq)
    outbound = Outbound([], translator.catalog)
    return EventApplier(mirror, NoStripe(), translator, metrics, refetch=False, outbound=outbound)


async def run_concurrently(handler: EventApplier, batch: list[dict[str, Any]]) -> dict[str, int]:
    queue = iter(batch)
    outcomes: dict[str, int] = {}

    async def worker() -> None:
        for event in queue:
            outcome = await handler.handle(event)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return outcomes


async def one_round(location: str, n: int, rng: random.Random, counting: Counting) -> dict[str, Any]:
    mirror = mirror_for(location)
    count_transactions(mirror, counting)
    await mirror.open()
    try:
        handler = applier(mirror)
        await run_concurrently(handler, events(200, rng, f"warm{rng.random()}"))
        batch = events(n, rng, f"run{rng.random()}")
        statements, transactions = counting.statements, counting.transactions
        cpu, wall = process_cpu_s(), time.perf_counter()
        outcomes = await run_concurrently(handler, batch)
        cpu, wall = process_cpu_s() - cpu, time.perf_counter() - wall
    finally:
        await mirror.close()
    return {
        "cpu_ms_per_event": round(cpu * 1000 / n, 3),
        "wall_ms_per_event": round(wall * 1000 / n, 3),
        "round_trips_per_event": round((counting.statements - statements) / n, 2),
        "transactions_per_event": round((counting.transactions - transactions) / n, 2),
        "outcomes": outcomes,
    }


def count_transactions(mirror: Mirror, counting: Counting) -> None:
    run_write = mirror._run_write  # type: ignore[attr-defined]

    async def counted(fn: Callable[[MirrorTxn], T], *, want_seq: bool) -> tuple[T, int | None]:
        counting.transactions += 1
        result: tuple[T, int | None] = await run_write(fn, want_seq=want_seq)
        return result

    mirror._run_write = counted  # type: ignore[attr-defined]


async def profile(location: str, rng: random.Random) -> str:
    """300 events one at a time, the transaction bodies run on this thread, under cProfile."""
    mirror = mirror_for(location)
    await mirror.open()
    try:
        write = mirror._write  # type: ignore[attr-defined]

        async def inline(fn: Callable[[MirrorTxn], T], *, want_seq: bool) -> tuple[T, int | None]:
            result: tuple[T, int | None] = write(fn, want_seq)
            return result

        mirror._run_write = inline  # type: ignore[attr-defined]
        handler = applier(mirror)
        for event in events(100, rng, f"pwarm{rng.random()}"):
            await handler.handle(event)
        batch = events(300, rng, f"prof{rng.random()}")
        profiler = cProfile.Profile(time.thread_time)  # CPU, not waiting
        profiler.enable()
        for event in batch:
            await handler.handle(event)
        profiler.disable()
    finally:
        await mirror.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--postgres", default=postgres_server.LOCAL)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    counting = Counting()
    rng = random.Random(12)
    with tempfile.TemporaryDirectory() as tmp, postgres_server.session_database(args.postgres) as pg:
        locations = {"sqlite": f"sqlite:{Path(tmp) / 'mirror.db'}", "postgresql": pg}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in locations}
        for n in range(args.rounds):
            for name, location in locations.items():
                if name == "sqlite":
                    Path(tmp, "mirror.db").unlink(missing_ok=True)
                else:
                    postgres_server.reset(pg)
                runs[name].append(asyncio.run(one_round(location, args.events, rng, counting)))
                print(f"round {n + 1} {name}: {runs[name][-1]}", flush=True)
        for name, found in runs.items():
            medians = {key: statistics.median(r[key] for r in found) for key in found[0] if key != "outcomes"}
            print(f"median {name}: {medians}")
        sqlite_cpu = statistics.median(r["cpu_ms_per_event"] for r in runs["sqlite"])
        pg_cpu = statistics.median(r["cpu_ms_per_event"] for r in runs["postgresql"])
        print(f"daemon-side CPU per event, PostgreSQL / SQLite: {pg_cpu / sqlite_cpu:.2f}x")
        if args.profile:
            postgres_server.reset(pg)
            print("--- cProfile, PostgreSQL, 300 events one at a time ---")
            print(asyncio.run(profile(pg, rng)))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
