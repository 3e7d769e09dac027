"""The outbound tests' parts: a real receiver on 127.0.0.1, a daemon that sends to it, polling."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.integration.daemon.conftest import make_settings
from tests.stripe_payloads import signed
from tiergate.sync_daemon.app import create_app
from tiergate.webhook_signature import HEADER, verify

SECRET = "whsec_outbound_test"
API_TOKEN = "api-token-outbound"
API = {"Authorization": f"Bearer {API_TOKEN}"}
Client = TestClient[web.Request, web.Application]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    """The platform's endpoint: records each delivery's body and signature header."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), request.headers.get(HEADER, "")))
        return web.json_response({"ok": True})

    def events(self) -> list[dict[str, Any]]:
        """Every delivery, verified with the package's helper (a bad signature raises)."""
        return [verify(body, header, SECRET) for body, header in self.received]


@contextlib.asynccontextmanager
async def receiving(port: int) -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1:`port` at /hooks/tiergate until the block ends."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/tiergate", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield receiver
    finally:
        await server.close()


async def until(predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30.0) -> None:
    """Poll `predicate` until true; a generous deadline (a loaded runner), never a latency assertion."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = predicate()
                if await result if not isinstance(result, bool) else result:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not true within {timeout_s:.0f} s: {predicate.__qualname__}") from None


async def daemon(
    aiohttp_client: Any, mirror: Path, endpoint: str, stripe_base: str = "http://127.0.0.1:9", **settings: Any
) -> Client:
    """The daemon's real app, sending its outbound webhooks to `endpoint` (retried every 0.05 s and up)."""
    values: dict[str, Any] = {
        "api_token": SecretStr(API_TOKEN),
        "stripe_refetch": False,
        "webhook_endpoints": endpoint,
        "webhook_secret": SecretStr(SECRET),
        "webhook_retry_base_s": 0.05,
        "webhook_max_attempts": 50,
        **settings,
    }
    client: Client = await aiohttp_client(create_app(make_settings(mirror, stripe_base, **values)))
    return client


def hook_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/hooks/tiergate"


async def post(client: Client, event: dict[str, Any]) -> str:
    raw, headers = signed(event)
    response = await client.post("/webhooks/stripe", data=raw, headers=headers)
    assert response.status == 200
    return str((await response.json())["outcome"])


async def deliveries(client: Client, status: str | None = None) -> list[dict[str, Any]]:
    """The delivery log (GET /v1/webhooks/deliveries), newest first."""
    query = f"?status={status}" if status else ""
    response = await client.get(f"/v1/webhooks/deliveries{query}", headers=API)
    assert response.status == 200
    rows: list[dict[str, Any]] = (await response.json())["deliveries"]
    return rows


async def all_delivered(client: Client) -> bool:
    """Every queued delivery is marked delivered (the receiver has all there is to get)."""
    return all(row["status"] == "delivered" for row in await deliveries(client))
