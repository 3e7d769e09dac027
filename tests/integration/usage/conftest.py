"""A real daemon (mirror on disk, HTTP on 127.0.0.1) and a sidecar following it, both in process."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.integration.daemon.conftest import AUTH, FEED_TOKEN, make_settings
from tiergate.sidecar.app import create_app as create_sidecar
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.app import create_app as create_daemon
from tiergate.sync_daemon.mirror.store import Mirror, MirrorAccount
from tiergate.sync_daemon.state import MIRROR

ROOT = Path(__file__).parents[3]
SidecarClient = TestClient[web.Request, web.Application]


async def eventually(probe: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Poll until `probe` holds; fails the test after `within` s (a bound, not a measured time)."""
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {within} s")
        await asyncio.sleep(0.02)


def events(tenant: str, n: int, code: str = "api_calls", prefix: str | None = None) -> list[dict[str, Any]]:
    prefix = prefix or uuid.uuid4().hex[:8]
    return [
        {"transaction_id": f"{prefix}-{i}", "external_customer_id": tenant, "code": code} for i in range(n)
    ]


@dataclass
class DaemonServer:
    server: TestServer
    mirror_path: Path

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def mirror(self) -> Mirror:
        return self.server.app[MIRROR]

    async def usage(self, tenant: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/v1/usage/{tenant}", headers=AUTH) as response,
        ):
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

    async def used(self, tenant: str, code: str = "api_calls") -> int:
        return int((await self.usage(tenant))["usage"].get(code, 0))

    async def put(self, account: MirrorAccount) -> None:
        await self.mirror.transact(lambda txn: txn.put_account(account))


async def start_daemon(
    tmp_path: Path,
    port: int = 0,
    sink_http: stripe.HTTPClient | None = None,
    backend: MirrorBackend | None = None,
    **overrides: Any,
) -> DaemonServer:
    mirror = tmp_path / "mirror.db"
    on = backend.settings() if backend is not None else {}
    settings = make_settings(mirror, "http://127.0.0.1:9", daemon_port=port, **on, **overrides)
    # A short shutdown: a follower's long poll must not hold a stopping daemon for its whole wait.
    server = TestServer(create_daemon(settings, sink_http=sink_http), host="127.0.0.1", port=port)
    await server.start_server(shutdown_timeout=0.2)
    return DaemonServer(server, mirror)


@pytest.fixture
async def daemon(tmp_path: Path, mirror_backend: MirrorBackend) -> Any:
    """A daemon on each mirror backend (SQLite, PostgreSQL)."""
    running = await start_daemon(tmp_path, backend=mirror_backend)
    yield running
    await running.server.close()


def sidecar_settings(tmp_path: Path, daemon_url: str | None, **overrides: Any) -> SidecarSettings:
    policies = tmp_path / "policies"
    if not policies.exists():
        shutil.copytree(ROOT / "policies", policies)
        shutil.copy(ROOT / "plans" / "plans.yaml", tmp_path / "plans.yaml")
    values: dict[str, Any] = {
        "replica_path": tmp_path / "sidecar" / "replica.db",
        "plans": tmp_path / "plans.yaml",
        "policies": policies,
        "decision_log_sample": 0.0,
        "daemon_url": daemon_url,
        "feed_token": SecretStr(FEED_TOKEN),
        "delivery_backoff_max_s": 0.2,
        **overrides,
    }
    return SidecarSettings(**values)


SidecarFactory = Callable[..., Awaitable[SidecarClient]]


@pytest.fixture
def make_sidecar(aiohttp_client: Any, tmp_path: Path) -> SidecarFactory:
    async def make(daemon_url: str | None, **overrides: Any) -> SidecarClient:
        client: SidecarClient = await aiohttp_client(
            create_sidecar(sidecar_settings(tmp_path, daemon_url, **overrides))
        )
        if daemon_url is not None:
            await eventually(lambda: _ready(client))
        return client

    return make


async def _ready(client: SidecarClient) -> bool:
    return (await client.get("/readyz")).status == 200


async def used(client: SidecarClient, tenant: str, feature: str = "api_calls") -> int:
    response = await client.get(f"/v1/check?tenant={tenant}&feature={feature}")
    assert response.status == 200
    return int((await response.json())["used"])


async def usage_status(client: SidecarClient) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/v1/status")).json()
    status: dict[str, Any] = body["usage"]
    return status


async def settled(client: SidecarClient) -> bool:
    """Everything accepted was delivered and the replica includes it: nothing pending."""
    status = await usage_status(client)
    return bool(status["backlog"] == 0 and status["pending"] == {"counters": 0, "awaiting_feed": 0})
