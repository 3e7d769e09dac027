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
from pathlib import Path

import psycopg

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
