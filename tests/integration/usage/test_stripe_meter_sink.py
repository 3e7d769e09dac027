"""The Stripe meter sink: the official client over the recording Stripe HTTP client, answering
with Stripe's own example objects and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fake_stripe import RecordingStripeHTTP
from tests.integration.daemon.conftest import AUTH
from tests.integration.usage.conftest import ROOT, DaemonServer, eventually, start_daemon
from tiergate.sync_daemon.mirror.store import MirrorAccount

METER_EVENTS = r"/v1/billing/meter_events"
NOW = datetime.now(UTC)


def metered_plans(tmp_path: Path) -> Path:
    text = (ROOT / "plans" / "plans.yaml").read_text()
    text = text.replace(
        "api_calls: {aggregation: count}", "api_calls: {aggregation: count, meter: api_requests}"
    )
    text = text.replace(
        "storage_gb: {aggregation: sum, field: gb}",
        "storage_gb: {aggregation: sum, field: gb, meter: storage}",
    )
    assert "meter: api_requests}" in text and "meter: storage}" in text
    path = tmp_path / "plans.yaml"
    path.write_text(text)
    return path


@pytest.fixture
async def metered(tmp_path: Path) -> AsyncIterator[tuple[DaemonServer, RecordingStripeHTTP]]:
    fake = RecordingStripeHTTP()
    daemon = await start_daemon(
        tmp_path,
        sink_http=fake,
        plans=metered_plans(tmp_path),
        stripe_meter_sink=True,
        sink_poll_s=0.05,
        sink_backoff_max_s=0.1,
    )
    await daemon.put(
        MirrorAccount(
            tenant="t_paid",
            tier="pro",
            status="active",
            stripe_customer_id="cus_Paid42",
            subscription_id="sub_Paid42",
            current_period_start=NOW - timedelta(days=2),
            current_period_end=NOW + timedelta(days=28),
        )
    )
    yield daemon, fake
    await daemon.server.close()


async def ingest(daemon: DaemonServer, events: list[dict[str, Any]]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{daemon.url}/v1/usage/batch", json={"events": events}, headers=AUTH) as response,
    ):
        assert response.status == 200 and (await response.json())["ingested"] == len(events)


async def status(daemon: DaemonServer) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.url}/v1/status", headers=AUTH) as response,
    ):
        body: dict[str, Any] = (await response.json())["sinks"]["stripe_meters"]
        return body


def event(tid: str, code: str = "api_calls", tenant: str = "t_paid", **properties: Any) -> dict[str, Any]:
    at = (NOW - timedelta(minutes=5)).timestamp()
    return {
        "transaction_id": tid,
        "external_customer_id": tenant,
        "code": code,
        "timestamp": at,
        "properties": properties,
    }


async def finished(daemon: DaemonServer, delivered: int, refused: int = 0) -> None:
    """Wait until the sink has finished with this many events (status is read, never stale counts)."""

    async def done() -> bool:
        body = await status(daemon)
        return bool(body["delivered"] == delivered and body["refused_for_good"] == refused)

    await eventually(done)


async def test_meter_events_carry_identifier_customer_value_and_time(
    metered: tuple[DaemonServer, RecordingStripeHTTP],
) -> None:
    daemon, fake = metered
    await ingest(daemon, [event("req-1"), event("gb-1", "storage_gb", gb=-3), event("ex-1", "exports")])
    await finished(daemon, 3)
    sent = {c.params["identifier"]: c for c in fake.sent("POST", METER_EVENTS)}
    assert set(sent) == {"req-1", "gb-1"}  # `exports` has no meter: not billed through Stripe
    storage = sent["gb-1"]
    assert storage.params == {
        "event_name": "storage",
        "identifier": "gb-1",
        "payload[stripe_customer_id]": "cus_Paid42",
        "payload[value]": "-3",  # a correction
        "timestamp": str(int((NOW - timedelta(minutes=5)).timestamp())),
    }
    assert storage.idempotency_key == "tiergate-meter-gb-1"
    assert (
        sent["req-1"].params["event_name"] == "api_requests" and sent["req-1"].params["payload[value]"] == "1"
    )


async def test_a_decimal_value_goes_to_stripe_as_its_exact_decimal_string(
    metered: tuple[DaemonServer, RecordingStripeHTTP],
) -> None:
    daemon, fake = metered
    await ingest(
        daemon, [event("gb-dec", "storage_gb", gb="0.1"), event("gb-fix", "storage_gb", gb="-2.125")]
    )
    await finished(daemon, 2)
    sent = {c.params["identifier"]: c.params["payload[value]"] for c in fake.sent("POST", METER_EVENTS)}
    assert sent == {"gb-dec": "0.1", "gb-fix": "-2.125"}  # Stripe takes decimal strings of <= 15 digits


async def test_stripe_errors_retry_refuse_or_count_as_sent(
    metered: tuple[DaemonServer, RecordingStripeHTTP],
) -> None:
    daemon, fake = metered
    fake.fail("POST", METER_EVENTS, 500, "An unknown error occurred", code="api_error")
    await ingest(daemon, [event("r-1")])

    async def retried() -> bool:
        return bool((await status(daemon))["errors"] >= 2)

    await eventually(retried)
    assert (await status(daemon))["lag_events"] == 1  # held, not skipped
    fake.fail(
        "POST",
        METER_EVENTS,
        400,
        "An event with identifier r-1 already exists.",
        code="duplicate_meter_event",
    )
    await finished(daemon, 1)  # Stripe has it: delivered
    del fake.failures[("POST", METER_EVENTS)]
    await ingest(daemon, [event("free-1", tenant="t_free_nobody"), event("r-2")])
    await finished(daemon, 2, refused=1)
    body = await status(daemon)
    assert "no Stripe customer" in body["recent_refusals"][0]["error"]
    assert [c.params["identifier"] for c in fake.sent("POST", METER_EVENTS)][-1] == "r-2"
