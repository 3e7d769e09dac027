"""What a PostgreSQL-backed test pays for its empty mirror (prints figures; asserts nothing).

    .venv/bin/python bench/empty_mirror_bench.py [ROUNDS]

Before: `postgres_server.reset` drops the schema and the mirror's open migrates it again. After:
`postgres_server.empty_mirror` puts a fresh schema's rows back while the structure is unchanged.
Each round first writes a few rows (what a test leaves), then runs both, in alternating order.
Wall time and this process's CPU (most of the work is the server's, which this does not see).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests import postgres_server
from tiergate.sync_daemon.mirror.postgres_schema import migrate


def leave_rows(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE tiergate.feed_head SET seq = 7")
        conn.execute(
            "INSERT INTO tiergate.customers (customer_id, tenant) VALUES ('cus_1', 't') ON CONFLICT DO NOTHING"
        )


def drop_and_migrate(url: str) -> None:
    postgres_server.reset(url)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    ways: dict[str, Callable[[str], None]] = {
        "before": drop_and_migrate,
        "after": postgres_server.empty_mirror,
    }
    walls: dict[str, list[float]] = {name: [] for name in ways}
    cpus: dict[str, list[float]] = {name: [] for name in ways}
    with postgres_server.server() as admin, postgres_server.session_database(admin) as url:
        postgres_server.empty_mirror(url)
        for round_ in range(rounds):
            for name in sorted(ways, reverse=bool(round_ % 2)):
                leave_rows(url)
                wall, cpu = time.perf_counter(), time.process_time()
                ways[name](url)
                walls[name].append(time.perf_counter() - wall)
                cpus[name].append(time.process_time() - cpu)
    for name in ways:
        print(
            f"{name}: wall median {statistics.median(walls[name]):.3f} s, CPU {statistics.median(cpus[name]):.4f} s"
        )
    print(f"ratio before/after: {statistics.median(walls['before']) / statistics.median(walls['after']):.1f}")
    print("load average:", Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
