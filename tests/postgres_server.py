"""A real PostgreSQL for the tests: the one answering on loopback, else a throwaway cluster.

Order: `TIERGATE_TEST_POSTGRES_URL` when set (a server you chose); else a server on
127.0.0.1:5432 that accepts the `postgres` role without a password; else Debian's PostgreSQL
(installed with apt-get when missing and we are root) started with `initdb` + `pg_ctl` in a
temporary directory on a free port, stopped and deleted at the end of the session.
Each test session works in a database of its own, dropped at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tiergate.sync_daemon.mirror.postgres_schema import SCHEMA, migrate

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


class NoPostgresError(RuntimeError):
    pass


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _install() -> Path:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise NoPostgresError(
            "no PostgreSQL server answers and none can be installed (needs root and apt-get)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
    found = _bin_dir()
    if found is None:
        raise NoPostgresError("apt-get installed postgresql but no initdb is under /usr/lib/postgresql")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """initdb + pg_ctl in a temporary directory (as the `postgres` user when we are root)."""
    bin_dir = _bin_dir() or _install()
    home = Path(tempfile.mkdtemp(prefix="tiergate-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(home, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", _free_port()
    run = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-s"]
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*run, "-o", options, "-l", str(home / "log"), "-w", "start"], check=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run, "-m", "immediate", "stop"], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The admin URL of a server for this session."""
    chosen = os.environ.get("TIERGATE_TEST_POSTGRES_URL")
    if chosen:
        yield chosen
    elif os.environ.get("TIERGATE_TEST_POSTGRES") != "throwaway" and _answers(LOCAL):
        yield LOCAL
    else:
        with throwaway_cluster() as url:
            yield url


@contextlib.contextmanager
def session_database(admin_url: str) -> Iterator[str]:
    """A fresh database, dropped at the end (its connections are ended first)."""
    name = f"tiergate_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def reset(url: str) -> None:
    """Empty the database between tests: the mirror's schema goes, the next open migrates again."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS tiergate CASCADE")


# -- an empty, migrated mirror for each test, without migrating each time ---------------------------

# What makes two schemas the same to the mirror: tables and columns, indexes, constraints, views,
# triggers, sequences. None when the schema is missing.
_STRUCTURE = """
SELECT md5(string_agg(part, ' | ' ORDER BY part)) FROM (
    SELECT concat_ws(' ', 'column', table_name, column_name, data_type, is_nullable, column_default)
        FROM information_schema.columns WHERE table_schema = %(schema)s
    UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = %(schema)s
    UNION ALL SELECT concat_ws(' ', 'view', viewname, definition) FROM pg_views WHERE schemaname = %(schema)s
    UNION ALL SELECT concat_ws(' ', 'constraint', conname, pg_get_constraintdef(oid))
        FROM pg_constraint WHERE connamespace = to_regnamespace(%(schema)s)
    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = to_regnamespace(%(schema)s) AND NOT t.tgisinternal
    UNION ALL SELECT 'sequence ' || sequencename FROM pg_sequences WHERE schemaname = %(schema)s
) AS parts(part)
"""


@dataclass(frozen=True)
class _Fresh:
    """A schema just migrated: its structure, the rows the migrations wrote, its sequences."""

    structure: str
    rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]]  # every table: its columns and rows
    sequences: dict[str, tuple[int, int | None]]  # name: start value, last value (None: never used)


_FRESH: dict[str, _Fresh] = {}


def empty_mirror(url: str) -> None:
    """The mirror's schema, migrated and as empty as migrations leave it (what a new mirror opens on).

    Migrating takes most of a second on a loaded machine and some 190 tests want an empty mirror: the
    first call drops the schema and migrates, and remembers what the fresh schema holds; later calls
    put those rows back (milliseconds) while the structure is still the fresh one. A test that changed
    the structure, or dropped the schema (`reset`), gets a dropped and migrated one again.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        fresh = _FRESH.get(url)
        if fresh is not None and _structure(conn) == fresh.structure:
            with contextlib.suppress(psycopg.Error):  # rows it cannot put back: migrate instead
                _restore(conn, fresh)
                return
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        migrate(conn)
        _FRESH[url] = _capture(conn)


def _structure(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute(_STRUCTURE, {"schema": SCHEMA}).fetchone()
    return None if row is None else row[0]


def _capture(conn: psycopg.Connection[Any]) -> _Fresh:
    rows = {}
    for (table,) in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", [SCHEMA]
    ).fetchall():
        cursor = conn.execute(f'SELECT * FROM {SCHEMA}."{table}"')
        rows[table] = ([column.name for column in cursor.description or []], cursor.fetchall())
    sequences = conn.execute(
        "SELECT sequencename, start_value, last_value FROM pg_sequences WHERE schemaname = %s", [SCHEMA]
    ).fetchall()
    structure = _structure(conn)
    assert structure is not None, f"no schema {SCHEMA} after migrating"
    return _Fresh(structure, rows, {name: (start, last) for name, start, last in sequences})


def _restore(conn: psycopg.Connection[Any], fresh: _Fresh) -> None:
    with conn.transaction():
        for table, (columns, rows) in fresh.rows.items():
            conn.execute(f'DELETE FROM {SCHEMA}."{table}"')
            if rows:
                names = ", ".join(f'"{c}"' for c in columns)
                marks = ", ".join(["%s"] * len(columns))
                insert = f'INSERT INTO {SCHEMA}."{table}" ({names}) OVERRIDING SYSTEM VALUE VALUES ({marks})'
                conn.cursor().executemany(insert, rows)
        for name, (start, last) in fresh.sequences.items():
            value, used = (start, False) if last is None else (last, True)
            conn.execute("SELECT setval(%s, %s, %s)", [f'{SCHEMA}."{name}"', value, used])
