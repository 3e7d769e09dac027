"""Webhook intake of two checkouts, A and B, on SQLite and PostgreSQL, in alternation (prints figures).

    .venv/bin/python bench/pg_ab.py --a /tmp/before --b . [--rounds 3] [--events 3000] [--daemon-cpus 0.5]

bench/pg_bench.py's webhook intake (signed `customer.subscription.updated` events over 16
connections, one daemon, a fresh mirror each run), run for each checkout's daemon (started with
PYTHONPATH=CHECKOUT and this virtualenv) on each backend, the checkouts alternating A, B, B, A,
... so a change in the shared machine's load hits both. Per run: events/s, the daemon's CPU
ms/event and PostgreSQL's (from /proc); then medians per checkout and backend, PostgreSQL/SQLite
within each checkout, and B/A. `--daemon-cpus C` gives each daemon a CPU quota (pg_bench's): the
daemon is then the bottleneck on both backends, so events/s compares what each spends per event.
Prints the load average; results in bench/results/pg_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from pg_bench import intake_run  # noqa: E402
from sync_bench import RESULTS, machine, table  # noqa: E402

from tests import postgres_server  # noqa: E402

BACKENDS = ("sqlite", "postgresql")
FIGURES = ("events_per_s", "daemon_cpu_ms_per_event", "postgres_cpu_ms_per_event", "p50_ms", "p99_ms")


@contextmanager
def daemons_from(checkout: Path) -> Iterator[None]:
    """Daemons spawned inside import the checkout's code (PYTHONPATH comes before the editable install)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(checkout)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def order(rounds: int) -> list[str]:
    """A, B, B, A, A, B, ...: each checkout first as often as second."""
    return [name for n in range(rounds) for name in (("a", "b") if n % 2 == 0 else ("b", "a"))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", type=Path, required=True, help="checkout A (e.g. the code before)")
    parser.add_argument("--b", type=Path, default=REPO, help="checkout B (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument(
        "--daemon-cpus", type=float, default=None, metavar="CPUS", help="a CPU quota per daemon"
    )
    parser.add_argument("--postgres", default=postgres_server.LOCAL, help="an admin URL (a scratch database)")
    args = parser.parse_args()
    checkouts = {"a": args.a.resolve(), "b": args.b.resolve()}
    load_before = os.getloadavg()
    print(f"load average before: {load_before}; A = {checkouts['a']}, B = {checkouts['b']}")
    rng = random.Random(12)
    runs: dict[str, list[dict[str, Any]]] = {f"{c}/{b}": [] for c in checkouts for b in BACKENDS}
    with postgres_server.session_database(args.postgres) as pg:
        for name in order(args.rounds):
            with daemons_from(checkouts[name]):
                for backend in BACKENDS:
                    found = intake_run(backend, 1, pg, args.events, rng, args.daemon_cpus)
                    runs[f"{name}/{backend}"].append(found)
                    shown = {k: found[k] for k in FIGURES}
                    print(f"{name.upper()} {backend}: {shown} load {os.getloadavg()[0]:.1f}", flush=True)
    load_after = os.getloadavg()
    medians = {
        key: {k: round(statistics.median(r[k] for r in found), 3) for k in FIGURES}
        for key, found in runs.items()
    }
    rows = []
    for key, m in medians.items():
        name, backend = key.split("/")
        sqlite = medians[f"{name}/sqlite"]
        rows.append(
            [
                name.upper(),
                backend,
                m["events_per_s"],
                round(m["events_per_s"] / sqlite["events_per_s"], 2),
                m["daemon_cpu_ms_per_event"],
                round(m["daemon_cpu_ms_per_event"] / sqlite["daemon_cpu_ms_per_event"], 2),
                m["postgres_cpu_ms_per_event"],
                m["p50_ms"],
                m["p99_ms"],
            ]
        )
    table(
        f"webhook intake, {args.events} events, medians of {args.rounds} rounds per checkout"
        + (f", {args.daemon_cpus} CPU per daemon" if args.daemon_cpus else ""),
        [
            "code",
            "backend",
            "events/s",
            "x SQLite",
            "daemon CPU ms/event",
            "x SQLite",
            "PostgreSQL CPU ms/event",
            "p50 ms",
            "p99 ms",
        ],
        rows,
    )
    for backend in BACKENDS:
        a, b = medians[f"a/{backend}"], medians[f"b/{backend}"]
        print(
            f"B / A on {backend}: events/s {b['events_per_s'] / a['events_per_s']:.2f}x, "
            f"daemon CPU {b['daemon_cpu_ms_per_event'] / a['daemon_cpu_ms_per_event']:.2f}x"
        )
    print(f"load average after: {load_after}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("pg_ab.json" if args.daemon_cpus is None else "pg_ab_quota.json")
    figures = {
        "machine": machine(),
        "load_average": {"before": load_before, "after": load_after},
        "checkouts": {k: str(v) for k, v in checkouts.items()},
        "events": args.events,
        "daemon_cpus": args.daemon_cpus,
        "medians": medians,
        "runs": runs,
    }
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
