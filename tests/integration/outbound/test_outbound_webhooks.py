"""Outbound webhooks: a real receiver on 127.0.0.1; signed, durable, retried after the receiver was down."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.integration.daemon.conftest import FEED_TOKEN, make_settings
from tests.integration.outbound.conftest import (
    API,
    SECRET,
    Client,
    all_delivered,
    daemon,
    deliveries,
    free_port,
    hook_url,
    post,
    receiving,
    until,
)
from tests.stripe_payloads import invoice_event, subscription_event
from tiergate.sync_daemon.state import APPLIER, MIRROR
from tiergate.webhook_signature import SignatureError, sign, verify


async def test_events_are_signed_retried_after_the_receiver_was_down_and_sent_once(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    port = free_port()
    client = await daemon(aiohttp_client, tmp_path / "mirror.db", hook_url(port))  # nothing listens yet
    created = subscription_event(
        "customer.subscription.created", event_id="evt_sub_1", tenant="t_acme", quantity=3
    )
    assert await post(client, created) == "applied"
    assert await post(client, created) == "duplicate"  # a replay causes no second event

    async def retried() -> bool:
        rows = await deliveries(client)
        return bool(rows) and int(rows[0]["attempts"]) >= 2

    await until(retried)  # refused, retried with backoff
    async with receiving(port) as receiver:
        await until(lambda: len(receiver.received) >= 1)
        await until(lambda: all_delivered(client))  # nothing left to send: no second delivery comes
        events = receiver.events()
        assert [e["type"] for e in events] == ["entitlements.changed"]
        data = events[0]["data"]
        assert data["tenant"] == "t_acme" and data["before"] is None
        features = data["after"].pop("features")  # what the plan grants: pro, 3 seats bought
        assert (features["sso"], features["seats"], features["audit_log"]) == (True, {"limit": 3}, False)
        assert data["after"] == {
            "tier": "pro",
            "status": "active",
            "quantity": 3,
            "addons": {},
            "cancel_at_period_end": False,
        }
        assert data["cause"] == {
            "source": "stripe",
            "stripe_event": "evt_sub_1",
            "type": "customer.subscription.created",
        }
        (row,) = await deliveries(client)
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
    port = free_port()
    async with receiving(port) as receiver:
        client = await daemon(aiohttp_client, tmp_path / "mirror.db", hook_url(port))
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
        await until(lambda: all_delivered(client))  # every alert queued has arrived
        crossed = [e["data"] for e in receiver.events() if e["type"] == "usage.threshold_crossed"]
        assert [(d["threshold"], d["used"], d["limit"], d["metric"]) for d in crossed] == [
            (0.8, 8, 10, "exports"),
            (1.0, 13, 10, "exports"),
        ]


async def test_a_queued_event_survives_a_daemon_restart_and_gives_up_visibly(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Fault: the receiver is down and the daemon stops; a new daemon on the same mirror delivers."""
    port = free_port()
    first = await daemon(aiohttp_client, tmp_path / "mirror.db", hook_url(port))
    created = subscription_event("customer.subscription.created", event_id="evt_restart", tenant="t_acme")
    assert await post(first, created) == "applied"
    await first.close()  # stopped with the delivery still pending

    async with receiving(port) as receiver:
        second = await daemon(aiohttp_client, tmp_path / "mirror.db", hook_url(port))
        # The sender marks a delivery after the receiver's 200, so the mark can lag the arrival.
        await until(lambda: _has_one(deliveries(second, "delivered")))
        (event,) = receiver.events()
        assert event["data"]["cause"]["stripe_event"] == "evt_restart"
        assert [d["event_id"] for d in await deliveries(second, "delivered")] == [event["id"]]

    # An endpoint that never answers: the delivery gives up after max attempts, failed in the log and metric.
    gone = f"http://127.0.0.1:{free_port()}/gone"
    third = await daemon(
        aiohttp_client, tmp_path / "other.db", gone, webhook_retry_base_s=0.01, webhook_max_attempts=3
    )
    assert await post(third, created) == "applied"
    await until(lambda: _has_one(deliveries(third, "failed")))
    (row,) = await deliveries(third, "failed")
    assert row["attempts"] == 3 and "ClientConnectorError" in row["last_error"]
    # The metric is counted once the row's transaction has returned: wait for it, then check it all.
    failed = 'tiergate_outbound_webhook_attempts_total{outcome="failed"} 1.0'
    await until(lambda: _shows(third, failed))
    metrics = await (await third.get("/metrics")).text()
    assert failed in metrics
    assert 'tiergate_outbound_webhook_attempts_total{outcome="retry"} 2.0' in metrics
    response = await third.get("/v1/webhooks/deliveries?status=lost", headers=API)
    assert response.status == 400 and (await response.json())["error"]["field"] == "status"


async def _has_one(rows: Awaitable[list[dict[str, Any]]]) -> bool:
    return len(await rows) == 1


async def _shows(client: Client, line: str) -> bool:
    return line in await (await client.get("/metrics")).text()
