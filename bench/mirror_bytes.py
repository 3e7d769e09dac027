"""Disk bytes per stored usage event in the mirror, on SQLite and PostgreSQL (prints; asserts nothing).

    .venv/bin/python bench/mirror_bytes.py                 # 20,000 events on each backend, ~1 min
    .venv/bin/python bench/mirror_bytes.py --events 2000   # smoke run
    .venv/bin/python bench/mirror_bytes.py --backend sqlite

Runs the daemon app in this process on a loopback port (a temporary SQLite file; a throwaway
database on TIERGATE_BENCH_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres) and
ingests events shaped like a sidecar's deliveries (POST /v1/usage/batch, 500 a batch, 1,000
tenants, a 36-character transaction id, two properties). Bytes per event are the growth of each
table with its indexes (SQLite: dbstat after a checkpoint; PostgreSQL: pg_total_relation_size
after VACUUM), divided by the events stored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tiergate.sync_daemon.app import create_app  # noqa: E402
from tiergate.sync_daemon.settings import DaemonSettings  # noqa: E402

TOKEN = "bench-feed-token-0123456789abcdef"
ADMIN = os.environ.get("TIERGATE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BATCH = 500
TABLES = ("usage_events", "changes", "usage")


def settings(mirror: Path, url: str | None) -> DaemonSettings:
    values: dict[str, Any] = {
        "stripe_api_key": SecretStr("sk_test_bench"),
        "stripe_api_base": "http://127.0.0.1:9",
        "stripe_webhook_secret": SecretStr("whsec_bench_0123456789"),
        "feed_token": SecretStr(TOKEN),
        "mirror_path": mirror,
        "plans": REPO / "plans" / "plans.yaml",
        "reconcile_at_start": False,
        "reconcile_interval_s": 3600,
        "log_level": "warning",
    }
    if url is not None:
        values["mirror_url"] = SecretStr(url)
    return DaemonSettings(**values)


def events(count: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, count, BATCH):
        yield [
            {
                "transaction_id": str(uuid.uuid4()),
                "external_customer_id": f"tenant-{n % 1000:04d}",
                "code": "api_calls",
                "properties": {"route": "/api/reports", "region": "eu-west-1"},
                "tiergate_tenant": f"tenant-{n % 1000:04d}",
            }
            for n in range(start, min(start + BATCH, count))
        ]


async def ingest(config: DaemonSettings, count: int) -> None:
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession() as session:
            for batch in events(count):
                url = str(server.make_url("/v1/usage/batch"))
                async with session.post(url, json={"events": batch}, headers=headers) as response:
                    body = await response.json()
                    assert response.status == 200 and body["ingested"] == len(batch), body
    finally:
        await server.close()


def sqlite_bytes(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = db.execute(
            "SELECT coalesce(m.tbl_name, s.name), sum(s.pgsize) FROM dbstat s "
            "LEFT JOIN sqlite_master m ON m.name = s.name GROUP BY 1"
        ).fetchall()
    return {name: size for name, size in rows if name in TABLES}


def postgres_bytes(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM")
        return {
            table: conn.execute("SELECT pg_total_relation_size(%s)", [f"tiergate.{table}"]).fetchone()[0]  # type: ignore[index]
            for table in TABLES
        }


@contextmanager
def throwaway_database() -> Iterator[str]:
    name = f"tiergate_bench_bytes_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def report(backend: str, before: dict[str, int], after: dict[str, int], count: int) -> None:
    per = {table: (after.get(table, 0) - before.get(table, 0)) / count for table in TABLES}
    parts = ", ".join(f"{table} {value:.0f}" for table, value in per.items())
    print(f"{backend:10s} {sum(per.values()):6.0f} bytes/event  ({parts}; {count} events)")


def run(backend: str, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mirror = Path(tmp) / "mirror.db"
        if backend == "sqlite":
            config = settings(mirror, None)
            asyncio.run(ingest(config, BATCH))  # the schema and the tenants' first rows
            before = sqlite_bytes(mirror)
            asyncio.run(ingest(config, count))
            report(backend, before, sqlite_bytes(mirror), count)
            return
        with throwaway_database() as url:
            config = settings(mirror, url)
            asyncio.run(ingest(config, BATCH))
            before = postgres_bytes(url)
            asyncio.run(ingest(config, count))
            report(backend, before, postgres_bytes(url), count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        run(backend, args.events)


if __name__ == "__main__":
    main()
