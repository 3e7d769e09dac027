"""The Lago sink against a recording double of Lago's events API: forwarding as sent, batches of
100, Lago's error answers, backoff, refusals kept visible, and resend without duplicates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from pydantic import SecretStr

from tests.integration.daemon.conftest import AUTH
from tests.integration.usage.conftest import DaemonServer, SidecarFactory, eventually, start_daemon
from tests.integration.usage.test_lago_contract import PERIOD, lago_event
from tests.lago_double import API_KEY, LagoDouble, start_lago
from tiergate.cli import main
from tiergate.sync_daemon.mirror.store import MirrorAccount

SUB = "sub_1NxLago"


@pytest.fixture
async def lago() -> AsyncIterator[tuple[LagoDouble, TestServer]]:
    double = LagoDouble()
    server = await start_lago(double)
    yield double, server
    await server.close()


async def daemon_with_lago(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer], key: str = API_KEY
) -> DaemonServer:
    url = str(lago[1].make_url("")).rstrip("/")
    daemon = await start_daemon(
        tmp_path,
        lago_api_url=url,
        lago_api_key=SecretStr(key),
        sink_poll_s=0.05,
        sink_backoff_max_s=0.1,
    )
    await daemon.put(
        MirrorAccount(
            tenant="t_lago",
            tier="pro",
            status="active",
            subscription_id=SUB,
            current_period_start=PERIOD[0],
            current_period_end=PERIOD[1],
        )
    )
    return daemon


async def ingest(daemon: DaemonServer, events: list[dict[str, Any]]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{daemon.url}/v1/usage/batch", json={"events": events}, headers=AUTH) as response,
    ):
        assert response.status == 200
        assert all(r["status"] == "ingested" for r in (await response.json())["results"])


async def sink_status(daemon: DaemonServer) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.url}/v1/status", headers=AUTH) as response,
    ):
        status: dict[str, Any] = (await response.json())["sinks"]["lago"]
        return status


def direct(tid: str, **fields: Any) -> dict[str, Any]:
    """A delivered event as a sidecar sends it: Lago's document plus the tenant it resolved."""
    return {**lago_event(tid, **fields), "tiergate_tenant": "t_lago"}


async def test_a_lago_event_reaches_lago_exactly_as_sent(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer], make_sidecar: SidecarFactory
) -> None:
    double, _ = lago
    daemon = await daemon_with_lago(tmp_path, lago)
    try:
        sidecar = await make_sidecar(daemon.url)
        sent = lago_event("doc-1")
        assert (await sidecar.post("/v1/usage", json={"event": sent})).status == 202
        await eventually(lambda: _has(double, 1))
        assert double.events[(SUB, "doc-1")] == sent  # unchanged: every field, as the app sent it
        customer_only = {"transaction_id": "doc-2", "external_customer_id": "t_lago", "code": "api_calls"}
        assert (await sidecar.post("/v1/usage", json={"event": customer_only})).status == 202
        await eventually(lambda: _has(double, 2))
        # Lago needs a subscription: the tenant's is added; the rest is as sent
        forwarded = double.events[(SUB, "doc-2")]
        assert {k: v for k, v in forwarded.items() if k not in ("external_subscription_id", "timestamp")} == (
            customer_only
        )
    finally:
        await daemon.server.close()


async def test_a_decimal_value_reaches_lago_as_the_app_wrote_it(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer], make_sidecar: SidecarFactory
) -> None:
    double, _ = lago
    daemon = await daemon_with_lago(tmp_path, lago)
    try:
        sidecar = await make_sidecar(daemon.url)
        text = json.dumps({"event": lago_event("dec-1", gb=0)}).replace('"gb": 0', '"gb": 2.50')
        text = text.replace(
            '"precise_total_amount_cents": "1234.56"', '"precise_total_amount_cents": "0.005"'
        )
        posted = await sidecar.post("/v1/usage", data=text, headers={"Content-Type": "application/json"})
        assert posted.status == 202
        correction = lago_event("dec-2", gb="-0.25")
        assert (await sidecar.post("/v1/usage", json={"event": correction})).status == 202
        await eventually(lambda: _has(double, 2))
        sent = b"".join(double.bodies)
        assert b'"gb":2.50' in sent and b'"gb":"-0.25"' in sent  # the number's own text; the string
        assert double.events[(SUB, "dec-2")] == correction
        assert double.events[(SUB, "dec-1")]["precise_total_amount_cents"] == "0.005"
    finally:
        await daemon.server.close()


async def _has(double: LagoDouble, n: int) -> bool:
    return len(double.events) >= n


async def test_batches_of_100_and_errors_retried_with_backoff(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer]
) -> None:
    double, _ = lago
    double.fail_next(3, 503)
    daemon = await daemon_with_lago(tmp_path, lago)
    try:
        await ingest(daemon, [direct(f"b{i}", gb=1) for i in range(250)])
        await eventually(lambda: _has(double, 250))
        assert [len(c) for c in double.calls] == [100, 100, 50]  # after 3 refused calls (503)

        async def caught_up() -> bool:
            return bool((await sink_status(daemon))["lag_events"] == 0)

        await eventually(caught_up)
        status = await sink_status(daemon)
        assert status["delivered"] == 250
        assert status["errors"] == 3 and "503" in status["last_error"]
        async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}/metrics") as response:
            metrics = await response.text()
        assert 'tiergate_sink_errors_total{sink="lago"} 3.0' in metrics
        assert 'tiergate_sink_events_total{outcome="delivered",sink="lago"} 250.0' in metrics
    finally:
        await daemon.server.close()


async def test_already_there_counts_as_delivered_and_refusals_are_kept(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer]
) -> None:
    double, _ = lago
    double.events[(SUB, "known")] = {"transaction_id": "known"}  # Lago has it already
    daemon = await daemon_with_lago(tmp_path, lago)
    try:
        nobody = {
            "transaction_id": "orphan",
            "tiergate_tenant": "t_free",
            "code": "api_calls",
        }  # no subscription
        await ingest(daemon, [direct("n1"), direct("known"), nobody, direct("n2")])

        async def finished() -> bool:
            return bool((await sink_status(daemon))["refused_for_good"] == 1)

        await eventually(finished)
        assert set(double.events) == {(SUB, "known"), (SUB, "n1"), (SUB, "n2")}
        assert double.already_there == 1
        status = await sink_status(daemon)
        assert status["delivered"] == 3
        refusal = status["recent_refusals"][0]
        assert refusal["transaction_id"] == "orphan" and "external_subscription_id" in refusal["error"]
    finally:
        await daemon.server.close()


async def test_a_wrong_key_holds_the_cursor_and_says_so(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer]
) -> None:
    double, _ = lago
    daemon = await daemon_with_lago(tmp_path, lago, key="wrong")
    try:
        await ingest(daemon, [direct("k1")])

        async def failing() -> bool:
            return bool((await sink_status(daemon))["errors"] >= 2)

        await eventually(failing)
        status = await sink_status(daemon)
        assert "401" in status["last_error"] and status["lag_events"] == 1 and not double.events
    finally:
        await daemon.server.close()


async def test_resend_sends_again_and_lago_keeps_one_of_each(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    double, _ = lago
    daemon = await daemon_with_lago(tmp_path, lago)
    try:
        await ingest(daemon, [direct(f"r{i}") for i in range(5)])

        async def committed() -> bool:
            return bool((await sink_status(daemon))["delivered"] == 5)

        await eventually(committed)
        calls = len(double.calls)
        for name, value in {
            "TIERGATE_MIRROR_PATH": str(daemon.mirror_path),
            "TIERGATE_STRIPE_API_KEY": "sk_test_x",
            "TIERGATE_STRIPE_WEBHOOK_SECRET": "whsec_test_0123456789",
            "TIERGATE_FEED_TOKEN": "feed-token-for-tests-0001",
        }.items():
            monkeypatch.setenv(name, value)
        since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        # In a thread: the command runs its own event loop, as it does from a shell beside the daemon.
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["usage", "resend", "--sink", "lago", "--since", since]
        )
        assert result.exit_code == 0, result.output
        assert "cursor 5 -> 0; 5 events will be sent again" in result.output

        async def resent() -> bool:
            return double.already_there >= 5

        await eventually(resent)
        assert len(double.calls) > calls and len(double.events) == 5  # sent again, kept once
        bad = CliRunner().invoke(main, ["usage", "resend", "--sink", "lago", "--since", "last week"])
        assert bad.exit_code == 2 and "RFC 3339" in bad.output
    finally:
        await daemon.server.close()


async def test_a_slow_lago_times_out_and_the_retry_duplicates_nothing(
    tmp_path: Path, lago: tuple[LagoDouble, TestServer]
) -> None:
    double, server = lago
    double.delay_s = 0.5  # longer than the sink's timeout: Lago stores the batch, the sink never hears
    url = str(server.make_url("")).rstrip("/")
    daemon = await start_daemon(
        tmp_path,
        lago_api_url=url,
        lago_api_key=SecretStr(API_KEY),
        sink_poll_s=0.05,
        sink_backoff_max_s=0.1,
        sink_timeout_s=0.2,
    )
    try:
        await ingest(daemon, [direct(f"s{i}") for i in range(3)])

        async def timed_out() -> bool:
            return bool((await sink_status(daemon))["errors"] >= 1)

        await eventually(timed_out)
        assert "TimeoutError" in (await sink_status(daemon))["last_error"]
        double.delay_s = 0.0

        async def delivered() -> bool:
            return bool((await sink_status(daemon))["delivered"] == 3)

        await eventually(delivered)
        # Whether Lago finished a call the sink gave up on or not, each event is there once.
        assert sorted(double.accepted) == ["s0", "s1", "s2"]
    finally:
        await daemon.server.close()
