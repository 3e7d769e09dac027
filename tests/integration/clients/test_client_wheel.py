"""`make dist`'s two wheels: the server's holds tiergate/ without the client's files; tiergate-client
installs alone in a fresh venv from its lock, with nothing of the servers, and the README's client
examples run there against a real sidecar (docs/adr/0027-client-distribution.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.clients.conftest import RunningSidecar
from tests.integration.clients.test_readme_examples import APPS, SCRIPTS, in_place
from tests.lockfile import REQUIREMENTS, ROOT, client_files

pytestmark = pytest.mark.slow
SERVER_ONLY = ("stripe", "grpc", "psycopg", "regorus", "sqlite_utils", "apscheduler")


@dataclass(frozen=True)
class Wheels:
    server: Path
    client: Path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    """Both wheels (and sdists) as `make dist` builds them; the client's wheel from its sdist."""
    out = tmp_path_factory.mktemp("dist")
    for project in (ROOT / "clients" / "python", ROOT):
        build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(project)]
        run = subprocess.run(build, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
    (server,) = out.glob("tiergate-*.whl")
    (client,) = out.glob("tiergate_client-*.whl")
    return Wheels(server, client)


def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {n for n in archive.namelist() if ".dist-info/" not in n}


def owned(name: str, files: set[str]) -> bool:
    return any(name == f or name.startswith(f + "/") for f in files)


def test_the_server_wheel_installs_only_under_tiergate(wheels: Wheels) -> None:
    files = names(wheels.server)
    assert {n.split("/")[0] for n in files} == {"tiergate"}
    assert {
        "tiergate/sidecar/app.py",
        "tiergate/sidecar/openapi.yaml",
        "tiergate/sync_daemon/openapi.yaml",
    } <= files
    assert not [n for n in files if owned(n, set(client_files()))], (
        "the client's files belong to tiergate-client"
    )


def test_the_client_wheel_holds_exactly_its_files(wheels: Wheels) -> None:
    files = names(wheels.client)
    assert all(owned(n, set(client_files())) for n in files)
    assert {
        "tiergate/__init__.py",
        "tiergate/models.py",
        "tiergate/client/sync.py",
        "tiergate/py.typed",
    } <= files
    assert not names(wheels.server) & files


@dataclass(frozen=True)
class ClientVenv:
    python: Path

    def run(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.python.parents[2],
        )

    def pip(self, *args: str) -> None:
        run = subprocess.run(
            [str(self.python), "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def client_venv(wheels: Wheels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientVenv]:
    """A fresh venv (outside the repository) with tiergate-client and its locked dependencies alone."""
    home = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True, timeout=300)
    venv = ClientVenv(home / "venv" / "bin" / "python")
    venv.pip("install", "--require-hashes", "-r", str(REQUIREMENTS / "client.txt"))
    venv.pip("install", "--no-deps", str(wheels.client))
    venv.pip("check")
    yield venv


def importable(venv: ClientVenv, module: str) -> bool:
    run = venv.run(f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)")
    return run.returncode == 0


def test_the_client_alone_has_nothing_of_the_servers(client_venv: ClientVenv) -> None:
    assert importable(client_venv, "tiergate.client") and importable(client_venv, "pydantic")
    assert not [m for m in (*SERVER_ONLY, "aiohttp", "tiergate.sidecar") if importable(client_venv, m)]


def test_the_blocking_example_runs_on_the_client_alone(
    client_venv: ClientVenv, sidecar: RunningSidecar
) -> None:
    (blocking,) = [s for s in SCRIPTS if "AsyncTiergateClient" not in s]
    run = client_venv.run(in_place(blocking, sidecar))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() and "sidecar_unreachable" not in run.stdout + run.stderr


def test_the_async_client_names_its_extra_when_aiohttp_is_missing(client_venv: ClientVenv) -> None:
    run = client_venv.run("from tiergate.client import AsyncTiergateClient")
    assert run.returncode == 1 and "pip install 'tiergate-client[aio]'" in run.stderr


# Runs a README web-app example in the client's venv: aiohttp through its test server, FastAPI as an
# ASGI app called directly (the venv has no HTTP client library beyond aiohttp).
DRIVE_APP = """
import asyncio, json, sys
namespace = {"__name__": "readme_app"}
exec(compile(sys.stdin.read(), "README app", "exec"), namespace)
app = namespace["app"]

async def asgi_get(tenant):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/reports", "raw_path": b"/reports", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"app"), (b"x-tenant-id", tenant.encode())],
             "client": ("127.0.0.1", 1), "server": ("app", 80)}
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

async def main():
    answers = []
    if "gate" in namespace:
        answers = [await asgi_get(t) for t in ("pro-active", "nobody")]
        await namespace["gate"].client.close()
    else:
        from aiohttp.test_utils import TestClient, TestServer
        async with TestClient(TestServer(app)) as client:
            for tenant in ("pro-active", "nobody"):
                response = await client.get("/reports", headers={"X-Tenant-Id": tenant})
                answers.append((response.status, await response.json()))
    print(json.dumps(answers))

asyncio.run(main())
"""


def test_the_async_and_web_app_examples_run_with_the_extras(
    client_venv: ClientVenv, sidecar: RunningSidecar
) -> None:
    client_venv.pip("install", "--require-hashes", "-r", str(REQUIREMENTS / "client-gates.txt"))
    client_venv.pip("check")
    assert not [m for m in SERVER_ONLY if importable(client_venv, m)]
    for script in [s for s in SCRIPTS if "AsyncTiergateClient" in s]:
        run = client_venv.run(in_place(script, sidecar))
        assert run.returncode == 0, run.stderr
        assert "sidecar_unreachable" not in run.stdout
    for app in APPS:
        run = subprocess.run(
            [str(client_venv.python), "-c", DRIVE_APP],
            input=in_place(app, sidecar),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        allowed, denied = json.loads(run.stdout)
        assert allowed == [200, {"tier": "pro"}]
        assert (denied[0], denied[1]["reason"]) == (403, "not_in_plan")
