"""Fixtures every test folder may use: the mirror backends (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests import postgres_server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this session's own on a real PostgreSQL server (see tests/postgres_server.py)."""
    with contextlib.ExitStack() as stack:
        try:
            admin = stack.enter_context(postgres_server.server())
        except postgres_server.NoPostgresError as exc:
            pytest.skip(f"PostgreSQL backend not tested: {exc}")
        yield stack.enter_context(postgres_server.session_database(admin))


@dataclass(frozen=True)
class MirrorBackend:
    name: str  # "sqlite" or "postgresql"
    path: Path  # the SQLite file (also set with PostgreSQL: the settings always carry a path)
    url: str | None = None

    @property
    def location(self) -> str:
        return self.url or f"sqlite:{self.path}"

    def settings(self) -> dict[str, Any]:
        """DaemonSettings overrides that put the mirror on this backend (besides `mirror_path`)."""
        return {"mirror_url": SecretStr(self.url)} if self.url is not None else {}


@pytest.fixture(params=["sqlite", "postgresql"])
def mirror_backend(request: pytest.FixtureRequest, tmp_path: Path) -> MirrorBackend:
    """Each test that takes this runs once per backend, on an empty mirror."""
    if request.param == "sqlite":
        return MirrorBackend("sqlite", tmp_path / "mirror.db")
    url: str = request.getfixturevalue("postgres_url")
    postgres_server.empty_mirror(url)
    return MirrorBackend("postgresql", tmp_path / "mirror.db", url)
