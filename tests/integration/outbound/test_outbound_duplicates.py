"""Two daemons on one PostgreSQL mirror deliver one queue: each delivery is claimed before it is
sent, so a receiver gets each event once (at least once stays the contract: a daemon killed
between the POST and its mark sends again, after the claim expires)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from tests import postgres_server
from tests.integration.outbound.conftest import all_delivered, daemon, free_port, hook_url, post, until
from tests.stripe_payloads import subscription_event
from tiergate.webhook_signature import HEADER, verify

from .conftest import SECRET

EVENTS = 60


async def slow_receiver(port: int, received: list[str]) -> TestServer:
    """Takes 50 ms an answer: long enough for a second daemon to find the same delivery due."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(str(verify(body, request.headers.get(HEADER, ""), SECRET)["id"]))
        await asyncio.sleep(0.05)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks/tiergate", handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


async def test_two_daemons_deliver_each_event_once(
    aiohttp_client: Any, tmp_path: Path, postgres_url: str
) -> None:
    postgres_server.empty_mirror(postgres_url)
    port = free_port()
    pg = SecretStr(postgres_url)
    first = await daemon(aiohttp_client, tmp_path / "a.db", hook_url(port), mirror_url=pg)
    second = await daemon(aiohttp_client, tmp_path / "b.db", hook_url(port), mirror_url=pg)
    for n in range(EVENTS):  # nothing listens yet: the queue fills
        event = subscription_event("customer.subscription.created", event_id=f"evt_dup_{n}", tenant=f"t_{n}")
        assert await post(first if n % 2 else second, event) == "applied"
    received: list[str] = []
    server = await slow_receiver(port, received)
    try:
        await until(lambda: all_delivered(first), timeout_s=120)
    finally:
        await server.close()
    repeats = sum(n - 1 for n in Counter(received).values())
    print(f"outbound duplicates: {repeats} of {len(received)} deliveries ({EVENTS} events, two daemons)")
    assert len(set(received)) == EVENTS
    assert repeats == 0, Counter(received).most_common(3)
