"""The daemon on 127.0.0.1: its real app, a fake Stripe API on a free port, and localstripe."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from demo.processes import Process, free_port, tiergate_command
from tests.conftest import MirrorBackend
from tests.stripe_payloads import SECRET, signed
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.mirror.store import Mirror, MirrorAccount
from tiergate.sync_daemon.settings import DaemonSettings
from tiergate.sync_daemon.state import MIRROR

ROOT = Path(__file__).parents[3]
FEED_TOKEN = "feed-token-for-daemon-tests"
AUTH = {"Authorization": f"Bearer {FEED_TOKEN}"}


def pg_daemon_process(tmp_path: Path, name: str, pg: str, **extra: str) -> tuple[Process, str]:
    """A `tiergate sync-daemon` process (not started) on the PostgreSQL mirror `pg`, and its URL:
    Stripe never called (no reconcile at start, no refetch), the sample catalog, `extra` settings."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")},
        "TIERGATE_DAEMON_PORT": str(port),
        "TIERGATE_MIRROR_URL": pg,
        "TIERGATE_MIRROR_PATH": str(tmp_path / f"unused-{name}.db"),
        "TIERGATE_PLANS": str(ROOT / "plans" / "plans.yaml"),
        "TIERGATE_STRIPE_API_KEY": "sk_test_kill",
        "TIERGATE_STRIPE_API_BASE": "http://127.0.0.1:9",  # never called: no reconcile, no refetch
        "TIERGATE_STRIPE_REFETCH": "false",
        "TIERGATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "TIERGATE_FEED_TOKEN": FEED_TOKEN,
        "TIERGATE_RECONCILE_AT_START": "false",
        "TIERGATE_LOG_LEVEL": "warning",
        **extra,
    }
    process = Process(f"daemon-{name}", tiergate_command("sync-daemon"), env, tmp_path / f"{name}.log", ROOT)
    return process, f"http://127.0.0.1:{port}"


def make_settings(mirror_path: Path, stripe_base: str, **overrides: Any) -> DaemonSettings:
    values: dict[str, Any] = {
        "stripe_api_key": SecretStr("sk_test_daemon"),
        "stripe_api_base": stripe_base,
        "stripe_webhook_secret": SecretStr(SECRET),
        "stripe_max_network_retries": 0,
        "stripe_timeout_s": 5.0,
        "feed_token": SecretStr(FEED_TOKEN),
        "mirror_path": mirror_path,
        "plans": ROOT / "plans" / "plans.yaml",
        "policies": ROOT / "policies",
        "reconcile_at_start": False,
        "reconcile_interval_s": 3600,
        **overrides,
    }
    return DaemonSettings(**values)


@dataclass
class FakeStripe:
    """The few Stripe API reads the daemon makes, served from dicts; records every request."""

    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    fail: bool = False
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/subscriptions", self._list)
        app.router.add_get("/v1/subscriptions/{id}", self._get)
        app.router.add_get("/v1/customers/{id}", self._get)
        return app

    async def _get(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        store = self.customers if "/customers/" in request.path else self.subscriptions
        if self.fail:
            return web.json_response({"error": {"type": "api_error", "message": "down"}}, status=500)
        found = store.get(request.match_info["id"])
        if found is None:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "no such"}}, status=404
            )
        return web.json_response(found)

    async def _list(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        if self.fail:
            return web.json_response({"error": {"type": "api_error", "message": "down"}}, status=500)
        data = list(self.subscriptions.values())
        return web.json_response(
            {"object": "list", "data": data, "has_more": False, "url": "/v1/subscriptions"}
        )


@dataclass
class Daemon:
    client: TestClient[web.Request, web.Application]
    stripe: FakeStripe

    @property
    def mirror(self) -> Mirror:
        return self.client.app[MIRROR]

    async def post(self, event: dict[str, Any] | str, **sign: Any) -> tuple[int, dict[str, Any]]:
        raw, headers = signed(event, **sign)
        response = await self.client.post("/webhooks/stripe", data=raw, headers=headers)
        return response.status, await response.json()

    async def account(self, tenant: str) -> MirrorAccount | None:
        return await self.mirror.transact(lambda txn: txn.account(tenant))


@pytest.fixture
async def fake_stripe(aiohttp_server: Any) -> FakeStripe:
    fake = FakeStripe()
    server: TestServer = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def daemon(
    aiohttp_client: Any,
    mirror_backend: MirrorBackend,
    fake_stripe: FakeStripe,
    request: pytest.FixtureRequest,
) -> Daemon:
    """The daemon app on each mirror backend (SQLite, PostgreSQL)."""
    overrides = {**mirror_backend.settings(), **getattr(request, "param", {})}
    settings = make_settings(mirror_backend.path, fake_stripe.url, **overrides)
    return Daemon(await aiohttp_client(create_app(settings)), fake_stripe)


# -- localstripe: a real separate process --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def localstripe_server() -> Iterator[str]:
    port = _free_port()
    launcher = ROOT / "tests" / "localstripe_server.py"
    process = subprocess.Popen(
        [sys.executable, str(launcher), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"localstripe exited with {process.returncode}")
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            return
        except urllib.error.HTTPError:  # 401 without a key: it is up
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"localstripe did not answer at {url} within 20 s")


@pytest.fixture
def localstripe(localstripe_server: str) -> str:
    """localstripe emptied for this test (webhook registrations survive the reset)."""
    request = urllib.request.Request(localstripe_server + "/_config/data", method="DELETE")
    urllib.request.urlopen(request, timeout=5).close()
    return localstripe_server


def register_webhook(localstripe_url: str, target: str, secret: str = SECRET) -> None:
    body = json.dumps({"url": target, "secret": secret}).encode()
    request = urllib.request.Request(
        localstripe_url + "/_config/webhooks/tiergate",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5).close()
