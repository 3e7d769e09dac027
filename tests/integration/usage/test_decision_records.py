"""Decision records: a sidecar keeps a deny with its input, ships it to the daemon with its usage,
and the daemon explains it with the Stripe event behind the account version (both mirror backends)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarClient,
    SidecarFactory,
    eventually,
    start_daemon,
)
from tests.stripe_payloads import invoice_event, signed, subscription_event
from tiergate.cli import main as root

API_TOKEN = "api-token-for-decision-records-0123456789"
API = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def daemon(tmp_path: Path, mirror_backend: MirrorBackend) -> AsyncIterator[DaemonServer]:
    running = await start_daemon(tmp_path, backend=mirror_backend, api_token=SecretStr(API_TOKEN))
    yield running
    await running.server.close()


async def _call(daemon: DaemonServer, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, daemon.url + path, **kwargs) as response,
    ):
        return response.status, await response.json()


async def _overdue(daemon: DaemonServer) -> str:
    """t_alice on pro, past due for longer than pro's grace: returns the event id that made it so
    (the failed invoice: it starts the grace period)."""
    now = datetime.now(UTC)
    period: dict[str, Any] = {
        "current_period_start": int((now - timedelta(days=3)).timestamp()),
        "current_period_end": int((now + timedelta(days=27)).timestamp()),
    }
    failed = invoice_event("invoice.payment_failed")
    failed["created"] = int((now - timedelta(days=40)).timestamp())
    overdue = subscription_event(
        "customer.subscription.created", event_id="evt_overdue_1", status="past_due", **period
    )
    overdue["created"] = failed["created"] - 1
    for event in (overdue, failed):
        raw, headers = signed(event)
        status, body = await _call(daemon, "POST", "/webhooks/stripe", data=raw, headers=headers)
        assert status == 200, body
    return str(failed["id"])


async def _check(sidecar: SidecarClient, tenant: str, feature: str) -> dict[str, Any]:
    response = await sidecar.get(f"/v1/check?tenant={tenant}&feature={feature}")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def test_a_deny_is_explained_with_the_stripe_event_behind_it(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    event_id = await _overdue(daemon)
    sidecar = await make_sidecar(daemon.url, decision_record_allow_sample=0.0)
    await eventually(lambda: _paid(sidecar))
    denied = await _check(sidecar, "t_alice", "sso")
    assert (denied["allow"], denied["reason"], denied["tier"], denied["paid_tier"]) == (
        False,
        "payment_overdue",
        "free",
        "pro",
    )
    local = await sidecar.get(f"/v1/decisions/{denied['decision_id']}")
    assert local.status == 200
    record = await local.json()
    assert record["input"]["account"]["status"] == "past_due" and record["account_version"] >= 1
    assert record["decided_by"] == {
        "rule": "restriction",
        "tier": "free",
        "addons": [],
        "text": "the account is past_due: the free tier applied instead of the paid pro tier, "
        "which would have allowed sso",
        "policy_revision": record["policy_revision"],
    }

    async def shipped() -> bool:
        status, _ = await _call(daemon, "GET", f"/v1/decisions/{denied['decision_id']}", headers=API)
        return status == 200

    await eventually(shipped)
    _, explained = await _call(daemon, "GET", f"/v1/decisions/{denied['decision_id']}", headers=API)
    assert explained["lineage"]["stripe_event"]["id"] == event_id
    assert explained["lineage"]["account_version"]["cause"] == "stripe_event"
    today = explained["today"]
    assert today["same_policy"] is True
    assert today["decided_by"] == record["decided_by"]  # the daemon's engine names the same rule
    assert today["same_input"]["same"] is True and today["current_state"]["same"] is True

    # Support grants SSO: the same input still denies, today's state does not.
    status, _ = await _call(
        daemon,
        "PUT",
        "/v1/tenants/t_alice/overrides/sso",
        json={"value": True, "reason": "goodwill while the card is fixed", "actor": "ana"},
        headers=API,
    )
    assert status == 200
    _, again = await _call(daemon, "GET", f"/v1/decisions/{denied['decision_id']}", headers=API)
    assert again["today"]["same_input"]["same"] is True
    assert (
        again["today"]["current_state"]["allow"] is True and again["today"]["current_state"]["same"] is False
    )
    assert again["lineage"]["overrides_in_force"] == {}  # none was in force when it was decided


async def _paid(sidecar: SidecarClient) -> bool:
    return (await _check(sidecar, "t_alice", "sso")).get("paid_tier") == "pro"


async def test_an_allow_is_not_recorded_unless_sampled(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    sidecar = await make_sidecar(daemon.url, decision_record_allow_sample=0.0)
    allowed = await _check(sidecar, "t_new", "api_calls")
    assert allowed["allow"] is True
    response = await sidecar.get(f"/v1/decisions/{allowed['decision_id']}")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"not json", "body"), (b"[]", "decisions"), (b'{"decisions": {}}', "decisions")],
)
async def test_bad_record_batches_are_400(daemon: DaemonServer, body: bytes, field: str) -> None:
    headers = {"Authorization": "Bearer feed-token-for-daemon-tests"}
    status, answer = await _call(daemon, "POST", "/v1/decisions/batch", data=body, headers=headers)
    assert (status, answer["error"]["field"]) == (400, field)


async def test_records_that_are_not_records_are_counted_not_stored(daemon: DaemonServer) -> None:
    headers = {"Authorization": "Bearer feed-token-for-daemon-tests"}
    good = {
        "decision_id": "abc-1",
        "at": "2026-12-01T00:00:00Z",
        "decision": {"tenant": "<script>", "feature": "sso", "allow": False, "reason": "not_in_plan"},
        "input": {"now": "2026-12-01T00:00:00Z"},
    }
    batch = {"decisions": [good, good, {"decision_id": "x"}, 7, {**good, "decision_id": ""}]}
    status, answer = await _call(daemon, "POST", "/v1/decisions/batch", json=batch, headers=headers)
    assert (status, answer) == (200, {"stored": 2, "rejected": 3})
    status, explained = await _call(daemon, "GET", "/v1/decisions/abc-1", headers=API)
    assert status == 200 and explained["record"]["decision"]["tenant"] == "<script>"
    assert (await _call(daemon, "POST", "/v1/decisions/batch", json=batch))[0] == 401
    assert (await _call(daemon, "GET", "/v1/decisions/abc-1"))[0] == 401
    assert (await _call(daemon, "GET", "/v1/decisions/nope", headers=API))[0] == 404


async def _cli(*args: str) -> Result:
    """The `tiergate` command, on a thread: the servers it calls run on this test's event loop."""
    return await asyncio.to_thread(
        CliRunner().invoke, root, list(args), env={"TIERGATE_API_TOKEN": API_TOKEN}
    )


async def test_the_cli_shows_tenants_checks_and_explains(
    daemon: DaemonServer, make_sidecar: SidecarFactory
) -> None:
    event_id = await _overdue(daemon)
    sidecar = await make_sidecar(daemon.url, decision_record_allow_sample=0.0)
    await eventually(lambda: _paid(sidecar))
    sidecar_url = str(sidecar.server.make_url("")).rstrip("/")
    checked = await _cli("check", "t_alice", "sso", "--sidecar-url", sidecar_url)
    assert checked.exit_code == 3, checked.output
    assert "deny: payment_overdue (tier free, paid pro)" in checked.output
    [decision_id] = re.findall(r"^decision (\S+) \(tiergate explain", checked.output, re.MULTILINE)

    shown = await _cli("tenant", "show", "t_alice", "--daemon-url", daemon.url)
    assert shown.exit_code == 0, shown.output
    assert "tier free (paid: pro)" in shown.output and event_id in shown.output
    found = await _cli("tenant", "search", "T_AL", "--daemon-url", daemon.url)
    assert found.output.split()[:3] == ["t_alice", "pro", "past_due"]

    async def shipped() -> bool:
        return (await _call(daemon, "GET", f"/v1/decisions/{decision_id}", headers=API))[0] == 200

    await eventually(shipped)
    explained = await _cli("explain", decision_id, "--daemon-url", daemon.url)
    assert explained.exit_code == 0, explained.output
    assert f"came from Stripe event {event_id}" in explained.output
    assert "same input, today's policy: deny (payment_overdue): the same" in explained.output
    assert "decided by rule restriction: the account is past_due: the free tier applied" in explained.output
    local = await _cli("explain", decision_id, "--sidecar-url", sidecar_url)
    assert local.exit_code == 0 and '"status": "past_due"' in local.output
    assert "decided by rule restriction" in local.output

    refused = await asyncio.to_thread(
        CliRunner().invoke,
        root,
        ["tenant", "show", "t_alice", "--daemon-url", daemon.url, "--token", "wrong"],
    )
    assert refused.exit_code == 1 and "answered 401" in refused.output
