"""The mirror on SQLite vs PostgreSQL, one daemon vs two ; prints figures, asserts nothing.

    .venv/bin/python bench/pg_bench.py [--quick] [--rounds N] [--postgres URL] [--daemon-cpus 0.5]

Against real processes on 127.0.0.1 (`tiergate sync-daemon`, `tiergate sidecar`) and a real
PostgreSQL (default: the server on 127.0.0.1:5432, in a scratch database dropped at the end):
1. webhook intake: signed `customer.subscription.updated` events POSTed over 16 connections in
   all (split evenly when there are two daemons) -> events/s, p50/p99 of the answers;
2. usage ingest: `POST /v1/usage/batch` of 100 events (what sidecars deliver) over 4 connections
   in all -> events/s;
3. webhook -> sidecar decision visible: p50/p99 (the sidecar long-polls the daemon's feed).
Each of 1 and 2 runs on SQLite (one daemon), PostgreSQL (one daemon), PostgreSQL (two daemons),
in that order, `--rounds` times; every configuration starts on an empty mirror. Ratios are taken
within the run (median of rounds). Where the time goes: the CPU seconds each part spent per event
(the daemons, the PostgreSQL backends serving this database, this load generator) read from
/proc, and how busy that kept the machine's CPUs. The machine is shared: the load average is printed.
`--daemon-cpus C` puts each daemon in a cgroup with a CPU quota of C CPUs (`harness.CpuQuota`), as a
pod's CPU limit does: then one daemon and two each get the same CPU, and two-vs-one measures the
design instead of the 2 cores the daemons share with PostgreSQL and the load generator here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from harness import (
    RESULTS,
    CpuQuota,
    Server,
    free_port,
    machine,
    percentiles_ms,
    process_cpu_s,
    spawn,
    table,
    tiergate_command,
)
from sync_bench import (
    TOKEN,
    daemon_env,
    measure_visibility,
    post_all,
    signed_intake_events,
    start_sidecar,
)

from tests import postgres_server

CONFIGS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2))
INTAKE_CONNECTIONS = 16
INGEST_CONNECTIONS = 4
INGEST_BATCH = 100
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- processes and CPU accounting ------------------------------------------------------------


def start_daemon(tmp: Path, name: str, pg_url: str | None) -> Server:
    port = free_port()
    env = {
        **daemon_env(tmp / "mirror.db", port),
        "TIERGATE_STRIPE_REFETCH": "false",
        **({"TIERGATE_MIRROR_URL": pg_url} if pg_url else {}),
    }
    return spawn(f"daemon-{name}", tiergate_command("sync-daemon"), env, tmp, f"http://127.0.0.1:{port}")


def backend_pids(pg_url: str) -> list[int]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(r[0]) for r in rows]


WAIT_KINDS = ("row_lock", "advisory_lock", "wal_flush", "on_cpu", "idle_in_txn", "other")
_SAMPLE_EVERY_S = 0.01


def wait_kind(state: str | None, wait_type: str | None, wait_event: str | None) -> str | None:
    """What a backend of the bench's database is doing, from pg_stat_activity (None: idle)."""
    if state == "idle in transaction":
        return "idle_in_txn"  # waiting for the daemon's next statement (round trips, the daemon's CPU)
    if state != "active":
        return None
    if wait_type is None:
        return "on_cpu"
    if wait_type == "Lock":
        return "advisory_lock" if wait_event == "advisory" else "row_lock"
    if wait_event in ("WALSync", "WALWrite", "WALFlush") or (wait_type, wait_event) == ("LWLock", "WALWrite"):
        return "wal_flush"
    return "other"


class WaitSampler:
    """Samples pg_stat_activity every 10 ms: how many of the bench database's backends are, on
    average, waiting on a row lock (ADR 13's feed_head), an advisory lock, the WAL flush, running,
    or idle inside a transaction (waiting for the daemon)."""

    def __init__(self, pg_url: str) -> None:
        self._url = pg_url
        self._stop = threading.Event()
        self._counts = dict.fromkeys(WAIT_KINDS, 0)
        self._samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                ).fetchall()
                for row in rows:
                    kind = wait_kind(*row)
                    if kind is not None:
                        self._counts[kind] += 1
                self._samples += 1
                time.sleep(_SAMPLE_EVERY_S)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {f"pg_{k}": round(n / max(self._samples, 1), 2) for k, n in self._counts.items()}


@dataclass
class CpuMeter:
    """CPU seconds spent between `start` and `stop` by the daemons, PostgreSQL and this process."""

    daemons: list[Server]
    pg_url: str | None
    daemon_cpus: float | None = None
    _before: dict[str, float] | None = None
    _pg_before: dict[int, float] | None = None
    _wall: float = 0.0
    _waits: WaitSampler | None = None

    def _self_s(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def _pg(self) -> dict[int, float]:
        return {pid: process_cpu_s(pid) for pid in backend_pids(self.pg_url)} if self.pg_url else {}

    def start(self) -> None:
        self._pg_before = self._pg()
        self._before = {
            "daemons": sum(process_cpu_s(d.popen.pid) for d in self.daemons),
            "bench": self._self_s(),
        }
        self._wall = time.perf_counter()
        if self.pg_url:
            self._waits = WaitSampler(self.pg_url)
            self._waits.start()

    def stop(self, events: int) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        assert self._before is not None and self._pg_before is not None
        daemons = sum(process_cpu_s(d.popen.pid) for d in self.daemons) - self._before["daemons"]
        bench = self._self_s() - self._before["bench"]
        after = self._pg()
        pg = sum(cpu - self._pg_before.get(pid, 0.0) for pid, cpu in after.items())
        busy = (daemons + bench + pg) / (wall * (os.cpu_count() or 1))
        figures = {
            "daemon_cpu_ms_per_event": round(daemons * 1000 / events, 3),
            "postgres_cpu_ms_per_event": round(pg * 1000 / events, 3),
            "loadgen_cpu_ms_per_event": round(bench * 1000 / events, 3),
            "cpus_busy_pct": round(busy * 100, 1),
        }
        if self._waits is not None:
            figures.update(self._waits.stop())
        if self.daemon_cpus:  # how much of their quota the daemons used: ~100 % = bound by it
            quota = wall * len(self.daemons) * self.daemon_cpus
            figures["daemon_quota_used_pct"] = round(daemons / quota * 100, 1)
        return figures


@contextmanager
def daemons_on(backend: str, count: int, pg_url: str, cpus: float | None) -> Iterator[list[Server]]:
    """`count` daemons on an empty mirror of `backend`, each in its own CPU quota of `cpus`, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="tiergate-pgbench-") as tmp_name:
        tmp = Path(tmp_name)
        url = pg_url if backend == "postgresql" else None
        if url:
            postgres_server.reset(url)
        servers: list[Server] = []
        quotas: list[CpuQuota] = []
        try:
            for n in range(count):
                servers.append(start_daemon(tmp, str(n), url))
                if cpus:
                    quotas.append(cpu_quota(f"daemon{n}", cpus))
                    quotas[-1].add(servers[-1].popen.pid)
            for server in servers:
                server.wait("/readyz")
            yield servers
        finally:
            for server in servers:
                server.stop()
            for quota in quotas:
                quota.remove()


def cpu_quota(name: str, cpus: float) -> CpuQuota:
    quota = CpuQuota.create(name, cpus)
    if isinstance(quota, str):
        raise SystemExit(f"--daemon-cpus: {quota}; run without it (or as root)")
    return quota


# -- 1. webhook intake ------------------------------------------------------------------------


def intake_run(
    backend: str, count: int, pg_url: str, events: int, rng: random.Random, cpus: float | None
) -> dict[str, Any]:
    with daemons_on(backend, count, pg_url, cpus) as servers:
        warm = signed_intake_events(100, 1000, rng, f"warm{backend}{count}{rng.random()}")
        asyncio.run(post_all(servers[0].url + "/webhooks/stripe", warm, 4))
        batches = [
            signed_intake_events(events // count, 10_000, rng, f"in{backend}{count}{n}{rng.random()}")
            for n in range(count)
        ]
        meter = CpuMeter(servers, pg_url if backend == "postgresql" else None, cpus)
        meter.start()

        async def all_daemons() -> list[tuple[float, list[float], dict[str, int]]]:
            per = INTAKE_CONNECTIONS // count
            return await asyncio.gather(
                *(post_all(s.url + "/webhooks/stripe", b, per) for s, b in zip(servers, batches, strict=True))
            )

        results = asyncio.run(all_daemons())
        elapsed = max(r[0] for r in results)
        latencies = [x for r in results for x in r[1]]
        outcomes: dict[str, int] = {}
        for r in results:
            for key, n in r[2].items():
                outcomes[key] = outcomes.get(key, 0) + n
        total = sum(len(b) for b in batches)
        cpu = meter.stop(total)
    return {
        "events": total,
        "events_per_s": round(total / elapsed, 1),
        "p50_ms": percentiles_ms(latencies)["p50_ms"],
        "p99_ms": percentiles_ms(latencies)["p99_ms"],
        "outcomes": outcomes,
        **cpu,
    }


# -- 2. usage ingest ----------------------------------------------------------------------------


async def ingest_all(urls: list[str], events: int, tag: str) -> float:
    requests = events // INGEST_BATCH
    pending = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=INGEST_CONNECTIONS)) as session:

        async def worker(url: str) -> None:
            for n in pending:
                batch = [
                    {
                        "transaction_id": f"{tag}-{n}-{i}",
                        "external_customer_id": f"u_{n % 500}",
                        "code": "api_calls",
                    }
                    for i in range(INGEST_BATCH)
                ]
                async with session.post(url + "/v1/usage/batch", json={"events": batch}, headers=AUTH) as r:
                    body = await r.json()
                    if r.status != 200 or body.get("ingested") != INGEST_BATCH:
                        raise SystemExit(f"ingest refused: {r.status} {body}")

        started = time.perf_counter()
        await asyncio.gather(*(worker(urls[c % len(urls)]) for c in range(INGEST_CONNECTIONS)))
        return time.perf_counter() - started


def ingest_run(
    backend: str, count: int, pg_url: str, events: int, rng: random.Random, cpus: float | None
) -> dict[str, Any]:
    with daemons_on(backend, count, pg_url, cpus) as servers:
        urls = [s.url for s in servers]
        asyncio.run(ingest_all(urls, 1000, f"warm{rng.random()}"))
        meter = CpuMeter(servers, pg_url if backend == "postgresql" else None, cpus)
        meter.start()
        elapsed = asyncio.run(ingest_all(urls, events, f"in{rng.random()}"))
        cpu = meter.stop(events)
    return {"events": events, "events_per_s": round(events / elapsed, 1), **cpu}


# -- 3. webhook -> sidecar decision visible ----------------------------------------------------


def visibility_run(backend: str, pg_url: str, rounds: int) -> dict[str, Any]:
    with daemons_on(backend, 1, pg_url, None) as servers, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sidecar = start_sidecar(tmp, servers[0], tmp / "replica.db")
        try:
            sidecar.wait("/readyz")
            acked, visible = asyncio.run(measure_visibility(servers[0], sidecar, rounds, tenants=20))
        finally:
            sidecar.stop()
    return {"acked": percentiles_ms(acked), "visible": percentiles_ms(visible)}


# -- the run ------------------------------------------------------------------------------------


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    numeric = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in numeric} | {"runs": runs}


Run = Callable[[str, int, str, int, random.Random, float | None], dict[str, Any]]


def measure(name: str, run: Run, args: argparse.Namespace) -> dict[str, Any]:
    events = args.intake_events if name == "intake" else args.ingest_events
    rng = random.Random(12)
    runs: dict[str, list[dict[str, Any]]] = {f"{b}x{n}": [] for b, n in CONFIGS}
    for _ in range(args.rounds):  # interleaved: a change in the machine's load hits every config
        for backend, count in CONFIGS:
            runs[f"{backend}x{count}"].append(run(backend, count, args.pg, events, rng, args.daemon_cpus))
    return {key: median_runs(r) for key, r in runs.items()}


def print_throughput(title: str, figures: dict[str, Any], latencies: bool) -> dict[str, float]:
    base = figures["sqlitex1"]["events_per_s"]
    one_pg = figures["postgresqlx1"]["events_per_s"]
    ratios = {
        "postgresql_over_sqlite": round(one_pg / base, 3),
        "two_over_one_postgresql": round(figures["postgresqlx2"]["events_per_s"] / one_pg, 3),
    }
    rows = []
    for key, f in figures.items():
        backend, count = key.split("x")
        rows.append(
            [
                backend,
                count,
                f["events_per_s"],
                round(f["events_per_s"] / base, 2),
                *([f["p50_ms"], f["p99_ms"]] if latencies else []),
                f["daemon_cpu_ms_per_event"],
                f["postgres_cpu_ms_per_event"],
                f["loadgen_cpu_ms_per_event"],
                f["cpus_busy_pct"],
                *([f["daemon_quota_used_pct"]] if "daemon_quota_used_pct" in f else []),
            ]
        )
    waits = [[*key.split("x"), *(f.get(f"pg_{k}", "") for k in WAIT_KINDS)] for key, f in figures.items()]
    table(
        f"{title}: PostgreSQL backends (mean number) by what they wait on",
        ["backend", "daemons", *WAIT_KINDS],
        waits,
    )
    quota = ["daemon quota used %"] if "daemon_quota_used_pct" in next(iter(figures.values())) else []
    table(
        title,
        [
            "backend",
            "daemons",
            "events/s",
            "x sqlite",
            *(["p50 ms", "p99 ms"] if latencies else []),
            "daemon CPU ms/event",
            "PostgreSQL CPU ms/event",
            "loadgen CPU ms/event",
            "CPUs busy %",
            *quota,
        ],
        rows,
    )
    print(
        f"PostgreSQL / SQLite (one daemon): {ratios['postgresql_over_sqlite']}x (target >= 0.5); "
        f"two daemons / one on PostgreSQL: {ratios['two_over_one_postgresql']}x"
    )
    return ratios


def postgres_settings(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }


def print_visibility(title: str, visibility: dict[str, dict[str, Any]]) -> None:
    table(
        title,
        ["backend", "ack p50 ms", "ack p99 ms", "visible p50 ms", "visible p99 ms", "max ms"],
        [
            [
                name,
                v["acked"]["p50_ms"],
                v["acked"]["p99_ms"],
                v["visible"]["p50_ms"],
                v["visible"]["p99_ms"],
                v["visible"]["max_ms"],
            ]
            for name, v in visibility.items()
        ],
    )


def visibility_rounds_only(args: argparse.Namespace, rounds: int) -> None:
    with postgres_server.session_database(args.postgres) as pg:
        for n in range(args.rounds):
            found = {b: visibility_run(b, pg, rounds) for b in ("sqlite", "postgresql")}
            print_visibility(f"round {n + 1}: webhook -> sidecar decision visible ({rounds} rounds)", found)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--visibility-only", action="store_true", help="only 3., --rounds times per backend")
    parser.add_argument("--ingest-only", action="store_true", help="only 2.")
    parser.add_argument("--intake-only", action="store_true", help="only 1.")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--daemon-cpus",
        type=float,
        default=None,
        metavar="CPUS",
        help="give each daemon a CPU quota (a cgroup, like a pod's CPU limit), e.g. 0.5; needs root",
    )
    parser.add_argument(
        "--postgres", default=postgres_server.LOCAL, help="an admin URL (a scratch database is made)"
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.intake_events = 400 if args.quick else 3000
    args.ingest_events = 2000 if args.quick else 20_000
    visibility_rounds = 30 if args.quick else 200
    load_before = os.getloadavg()
    print(f"load average before: {load_before}")
    if args.visibility_only:
        visibility_rounds_only(args, visibility_rounds)
        return
    if args.ingest_only:
        with postgres_server.session_database(args.postgres) as args.pg:
            ingest = measure("ingest", ingest_run, args)
            print_throughput(f"usage ingest ({args.ingest_events} events)", ingest, latencies=False)
        print(f"load average after: {os.getloadavg()}")
        return
    if args.intake_only:
        with postgres_server.session_database(args.postgres) as args.pg:
            intake = measure("intake", intake_run, args)
            print_throughput(f"webhook intake ({args.intake_events} signed events)", intake, latencies=True)
        print(f"load average after: {os.getloadavg()}")
        return
    with postgres_server.session_database(args.postgres) as pg:
        args.pg = pg
        pg_settings = postgres_settings(pg)
        print(f"PostgreSQL: {pg_settings}")
        intake = measure("intake", intake_run, args)
        ratios_intake = print_throughput(
            f"webhook intake ({args.intake_events} signed events, {INTAKE_CONNECTIONS} connections in all)",
            intake,
            latencies=True,
        )
        ingest = measure("ingest", ingest_run, args)
        ratios_ingest = print_throughput(
            f"usage ingest ({args.ingest_events} events, {INGEST_BATCH} per POST, {INGEST_CONNECTIONS} connections)",
            ingest,
            latencies=False,
        )
        visibility = {b: visibility_run(b, pg, visibility_rounds) for b in ("sqlite", "postgresql")}
    print_visibility(
        f"webhook -> sidecar decision visible ({visibility_rounds} rounds, one daemon + one sidecar)",
        visibility,
    )
    load_after = os.getloadavg()
    print(f"load average after: {load_after}")
    figures = {
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_after},
        "postgresql": pg_settings,
        "rounds": args.rounds,
        "daemon_cpus": args.daemon_cpus,
        "intake": intake,
        "intake_ratios": ratios_intake,
        "ingest": ingest,
        "ingest_ratios": ratios_ingest,
        "visibility": visibility,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    quota = f"_cpus{args.daemon_cpus}" if args.daemon_cpus else ""
    out = RESULTS / f"pg_bench{'_quick' if args.quick else ''}{quota}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
