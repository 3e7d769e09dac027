"""Outbound webhooks: a real receiver on 127.0.0.1; signed, durable, retried after the receiver was down."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from sync_daemon.app import create_app
from sync_daemon.state import APPLIER, MIRROR
from tests.integration.daemon.conftest import FEED_TOKEN, make_settings
from tests.stripe_payloads import invoice_event, signed, subscription_event
from tiergate.webhook_signature import HEADER, SignatureError, sign, verify

SECRET = "whsec_outbound_test"
API = {"Authorization": "Bearer api-token-outbound"}
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
        return [verify(body, header, SECRET) for body, header in self.received]


async def until(predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            result = predicate()
            if await result if not isinstance(result, bool) else result:
                return
            await asyncio.sleep(0.05)


async def daemon(aiohttp_client: Any, tmp_path: Path, port: int) -> Client:
    settings = make_settings(
        tmp_path / "mirror.db",
        "http://127.0.0.1:9",
        api_token=SecretStr("api-token-outbound"),
        stripe_refetch=False,
        webhook_endpoints=f"http://127.0.0.1:{port}/hooks/tiergate",
        webhook_secret=SecretStr(SECRET),
        webhook_retry_base_s=0.05,
        webhook_max_attempts=50,
    )
    client: Client = await aiohttp_client(create_app(settings))
    return client


async def post(client: Client, event: dict[str, Any]) -> str:
    raw, headers = signed(event)
    response = await client.post("/webhooks/stripe", data=raw, headers=headers)
    assert response.status == 200
    return str((await response.json())["outcome"])


async def test_events_are_signed_retried_after_the_receiver_was_down_and_sent_once(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    port = free_port()
    client = await daemon(aiohttp_client, tmp_path, port)  # nothing listens on `port` yet
    created = subscription_event(
        "customer.subscription.created", event_id="evt_sub_1", tenant="t_acme", quantity=3
    )
    assert await post(client, created) == "applied"
    assert await post(client, created) == "duplicate"  # a replay causes no second event

    async def attempts() -> int:
        response = await client.get("/v1/webhooks/deliveries", headers=API)
        rows = (await response.json())["deliveries"]
        return int(rows[0]["attempts"]) if rows else 0

    await until(lambda: _at_least(attempts(), 2))  # refused, retried with backoff
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/tiergate", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        await until(lambda: len(receiver.received) >= 1)
        await asyncio.sleep(0.3)  # a second delivery would have come by now
        events = receiver.events()
        assert [e["type"] for e in events] == ["entitlements.changed"]
        data = events[0]["data"]
        assert data["tenant"] == "t_acme" and data["before"] is None
        assert data["after"] == {
            "tier": "pro",
            "status": "active",
            "quantity": 3,
            "addons": {},
            "cancel_at_period_end": False,
        }
        assert data["cause"] == {"stripe_event": "evt_sub_1", "type": "customer.subscription.created"}
        response = await client.get("/v1/webhooks/deliveries", headers=API)
        (row,) = (await response.json())["deliveries"]
        assert (row["status"], row["event_id"], row["last_status"]) == ("delivered", events[0]["id"], 200)
        assert row["attempts"] >= 3 and row["type"] == "entitlements.changed"

        # A failed payment opens the grace: payment.overdue (grace_started), and the change of status.
        failed = invoice_event("invoice.payment_failed", tenant="t_acme")
        failed["data"]["object"]["customer"] = created["data"]["object"]["customer"]
        assert await post(client, failed) == "applied"
        await until(lambda: len(receiver.received) >= 2)
        overdue = [e for e in receiver.events() if e["type"] == "payment.overdue"]
        assert overdue and overdue[0]["data"]["phase"] == "grace_started"
        assert overdue[0]["data"]["cause"]["stripe_event"] == failed["id"]

        # The grace ends: grace_over, once, however often the scan runs.
        outbound = client.app[APPLIER].outbound
        assert outbound is not None
        later = datetime.now(UTC) + timedelta(days=30)
        assert await outbound.scan_graces(client.app[MIRROR], later) == 1
        assert await outbound.scan_graces(client.app[MIRROR], later) == 0
        await until(lambda: any(e["data"].get("phase") == "grace_over" for e in receiver.events()))
    finally:
        await server.close()


async def _at_least(value: Awaitable[int], minimum: int) -> bool:
    return await value >= minimum


def test_the_verification_helper_refuses_what_it_must() -> None:
    body = b'{"id":"evt_tg_1","type":"entitlements.changed","data":{}}'
    now = 1_780_000_000
    good = sign(SECRET, body, now)
    assert verify(body, good, SECRET, now=now)["id"] == "evt_tg_1"
    assert verify(body, f"{good},v1=deadbeef", SECRET, now=now + 299)["type"] == "entitlements.changed"
    cases = [
        (body, None, "no Tiergate-Signature header"),
        (body, "v1=abc", "must look like"),
        (body, good, "more than 300s"),  # checked at now + 301 below
        (body + b" ", good, "no v1 signature matches"),
        (body, sign("whsec_other", body, now), "no v1 signature matches"),
    ]
    for raw, header, says in cases:
        at = now + 301 if says == "more than 300s" else now
        with pytest.raises(SignatureError, match=says):
            verify(raw, header, SECRET, now=at)


async def test_settings_refuse_endpoints_without_a_secret_and_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TIERGATE_WEBHOOK_SECRET"):
        make_settings(
            tmp_path / "m.db", "http://127.0.0.1:9", webhook_endpoints="https://platform.example/hook"
        )
    with pytest.raises(ValueError, match="not an http"):
        make_settings(
            tmp_path / "m.db",
            "http://127.0.0.1:9",
            webhook_endpoints="ftp://x",
            webhook_secret=SecretStr("outbound-secret-0123456789"),
        )


async def test_usage_thresholds_are_sent_once_per_tenant_metric_period_and_threshold(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/tiergate", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        client = await daemon(aiohttp_client, tmp_path, server.port or 0)
        # A limit of 10 exports for this tenant (an override); the catalog alerts at 0.8 and 1.0.
        response = await client.put(
            "/v1/tenants/t_acme/overrides/exports",
            json={"value": {"limit": 10}, "reason": "test"},
            headers=API,
        )
        assert response.status == 200

        async def use(first: int, count: int) -> None:
            events = [
                {"transaction_id": f"tx_{n}", "external_customer_id": "t_acme", "code": "exports"}
                for n in range(first, first + count)
            ]
            feed = {"Authorization": f"Bearer {FEED_TOKEN}"}
            response = await client.post("/v1/usage/batch", json={"events": events}, headers=feed)
            assert response.status == 200, await response.text()

        await use(0, 7)
        await use(7, 1)  # 8 of 10: the 80 % alert
        await use(7, 1)  # a replayed transaction id: not counted, no alert
        await use(8, 5)  # 13 of 10: the 100 % alert, once
        await use(13, 5)
        await until(lambda: len(receiver.received) >= 2)
        await asyncio.sleep(0.3)
        crossed = [e["data"] for e in receiver.events() if e["type"] == "usage.threshold_crossed"]
        assert [(d["threshold"], d["used"], d["limit"], d["metric"]) for d in crossed] == [
            (0.8, 8, 10, "exports"),
            (1.0, 13, 10, "exports"),
        ]
    finally:
        await server.close()


async def test_a_queued_event_survives_a_daemon_restart_and_gives_up_visibly(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Fault: the receiver is down and the daemon stops; a new daemon on the same mirror delivers."""
    port = free_port()
    first = await daemon(aiohttp_client, tmp_path, port)
    created = subscription_event("customer.subscription.created", event_id="evt_restart", tenant="t_acme")
    assert await post(first, created) == "applied"
    await first.close()  # stopped with the delivery still pending

    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/tiergate", receiver.handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        second = await daemon(aiohttp_client, tmp_path, port)
        await until(lambda: len(receiver.received) >= 1)
        (event,) = receiver.events()
        assert event["data"]["cause"]["stripe_event"] == "evt_restart"
        response = await second.get("/v1/webhooks/deliveries?status=delivered", headers=API)
        assert [d["event_id"] for d in (await response.json())["deliveries"]] == [event["id"]]
    finally:
        await server.close()

    # An endpoint that never answers: the delivery gives up after max attempts, failed in the log and metric.
    settings = make_settings(
        tmp_path / "other.db",
        "http://127.0.0.1:9",
        api_token=SecretStr("api-token-outbound"),
        stripe_refetch=False,
        webhook_endpoints=f"http://127.0.0.1:{free_port()}/gone",
        webhook_secret=SecretStr(SECRET),
        webhook_retry_base_s=0.01,
        webhook_max_attempts=3,
    )
    third: Client = await aiohttp_client(create_app(settings))
    assert await post(third, created) == "applied"

    async def failed() -> bool:
        response = await third.get("/v1/webhooks/deliveries?status=failed", headers=API)
        return len((await response.json())["deliveries"]) == 1

    await until(failed)
    response = await third.get("/v1/webhooks/deliveries?status=failed", headers=API)
    (row,) = (await response.json())["deliveries"]
    assert row["attempts"] == 3 and "ClientConnectorError" in row["last_error"]
    metrics = await (await third.get("/metrics")).text()
    assert 'tiergate_outbound_webhook_attempts_total{outcome="failed"} 1.0' in metrics
    assert 'tiergate_outbound_webhook_attempts_total{outcome="retry"} 2.0' in metrics
    response = await third.get("/v1/webhooks/deliveries?status=lost", headers=API)
    assert response.status == 400 and (await response.json())["error"]["field"] == "status"
