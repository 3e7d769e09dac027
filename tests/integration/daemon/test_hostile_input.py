"""Hostile input at the daemon is a clean 4xx naming the problem: never a 500, never a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from tests.integration.daemon.conftest import AUTH, FEED_TOKEN, Daemon, make_settings
from tests.stripe_payloads import subscription_event


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=9223372036854775808", "since"),
        ("since=-1", "since"),
        ("since=0&wait=nan", "wait"),
        ("since=0&wait=inf", "wait"),
        ("since=0&wait=-1", "wait"),
        ("since=1e400", "since"),
    ],
)
async def test_feed_query_numbers_are_bounded(daemon: Daemon, query: str, field: str) -> None:
    async with asyncio.timeout(5):  # `wait=nan` once waited for the next change, however long
        response = await daemon.client.get(f"/v1/feed/changes?{query}", headers=AUTH)
    body = await response.json()
    assert response.status == 400 and body["error"]["field"] == field, body


@pytest.mark.parametrize("created", ["1700000000", 1.5, None, True, [1]])
async def test_a_signed_event_with_a_bad_created_is_refused(daemon: Daemon, created: Any) -> None:
    event = subscription_event("customer.subscription.created")
    event["created"] = created
    status, body = await daemon.post(event)
    assert status == 400 and body["error"]["field"] == "created", body


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer    ", "Basic " + FEED_TOKEN, FEED_TOKEN])
async def test_an_empty_or_malformed_bearer_opens_nothing(daemon: Daemon, header: str) -> None:
    response = await daemon.client.get("/v1/feed/snapshot", headers={"Authorization": header})
    assert response.status == 401


@pytest.mark.parametrize("token", ["", "       ", " , "])
def test_an_empty_feed_token_is_refused_at_start(tmp_path: Any, token: str) -> None:
    with pytest.raises(ValidationError, match="feed_token"):
        make_settings(tmp_path / "mirror.db", "http://127.0.0.1:9", feed_token=token)


async def test_a_rejected_usage_event_with_a_huge_integer_id_is_answered(daemon: Daemon) -> None:
    huge = 2**70
    events = [
        {"transaction_id": huge, "external_customer_id": "t_alice", "code": "api_calls"},
        {"transaction_id": "ok-1", "external_customer_id": "t_alice", "code": "api_calls"},
    ]
    for expected in ("ingested", "duplicate"):  # the retry finds the first answer's commit
        response = await daemon.client.post("/v1/usage/batch", json={"events": events}, headers=AUTH)
        body = await response.json()
        assert response.status == 200, body
        rejected, counted = body["results"]
        assert rejected["status"] == "rejected" and rejected["transaction_id"] == str(huge)
        assert "events[0].transaction_id" in rejected["error"]
        assert counted["status"] == expected


def _without_data(event: dict[str, Any]) -> None:
    del event["data"]


def _null_object(event: dict[str, Any]) -> None:
    event["data"]["object"] = None


def _period_end(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        event["data"]["object"]["items"]["data"][0]["current_period_end"] = value
        event["data"]["object"]["current_period_end"] = value

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_without_data, "data"),
        (_null_object, "data.object"),
        (_period_end("soon"), "current_period_end"),
        (_period_end(1.5e300), "current_period_end"),
        (_period_end(10**30), "current_period_end"),
    ],
)
async def test_a_signed_event_of_the_wrong_shape_is_a_4xx_naming_the_field(
    daemon: Daemon, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    event = subscription_event("customer.subscription.created", event_id="evt_shape")
    change(event)
    status, body = await daemon.post(event)
    assert status == 400 and body["error"]["field"].endswith(field), body
    assert await daemon.account("t_alice") is None
    fixed = subscription_event("customer.subscription.created", event_id="evt_shape")
    assert (await daemon.post(fixed))[1]["outcome"] == "applied"  # nothing of it was recorded


async def test_an_event_dated_ahead_is_refused_counted_and_logged(daemon: Daemon) -> None:
    ahead = int(time.time()) + 365 * 86400
    with capture_logs() as logs:
        status, body = await daemon.post(subscription_event("customer.subscription.created", created=ahead))
    assert status == 400 and body["error"]["field"] == "created", body
    assert "TIERGATE_WEBHOOK_FUTURE_TOLERANCE_S" in body["error"]["message"]
    assert any(e["event"] == "webhook_rejected" and e["reason_code"] == "future" for e in logs), logs
    assert await daemon.account("t_alice") is None
    metrics = await (await daemon.client.get("/metrics")).text()
    assert 'tiergate_webhooks_refused_total{reason="future"} 1.0' in metrics
    now = int(time.time())
    assert (await daemon.post(subscription_event("customer.subscription.created", created=now)))[0] == 200
    assert await daemon.account("t_alice") is not None  # a real event later is not `stale`


@pytest.mark.parametrize("tenant", ["t" * 201, "tab\there", "nul\x00"])
async def test_a_tenant_id_the_sidecars_refuse_is_not_stored(daemon: Daemon, tenant: str) -> None:
    with capture_logs() as logs:
        status, body = await daemon.post(subscription_event("customer.subscription.created", tenant=tenant))
    assert status == 200 and body["outcome"] == "invalid_tenant", body
    assert "tenant" in body["error"]["message"] and body["error"]["field"] == "metadata.tenant_id"
    assert any(e["event"] == "invalid_tenant" for e in logs), logs
    stored_as = tenant.replace("\x00", "")  # PostgreSQL text holds no NUL: ask for what it would keep
    assert await daemon.account(stored_as) is None
    metrics = await (await daemon.client.get("/metrics")).text()
    assert (
        'tiergate_webhooks_total{outcome="invalid_tenant",type="customer.subscription.created"} 1.0'
        in metrics
    )
