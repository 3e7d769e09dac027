"""The console at /console without a browser: sign-in, cookies, CSRF, roles, escaping, every page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import SecretStr

from tests.integration.daemon.conftest import AUTH, Daemon
from tests.stripe_payloads import subscription_event

READER = "console-reader-token-0123456789abcdef"
OPERATOR = "console-operator-token-0123456789abcd"
TOKENS = {"console_token": SecretStr(READER), "console_operator_token": SecretStr(OPERATOR)}
EVIL = "<script>alert(1)</script>"
pytestmark = pytest.mark.parametrize("daemon", [TOKENS], indirect=True)


async def _sign_in(daemon: Daemon, token: str, actor: str = "ana") -> str:
    response = await daemon.client.post(
        "/console/sign-in", data={"token": token, "actor": actor}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    return await _csrf(daemon)


async def _csrf(daemon: Daemon) -> str:
    page = await daemon.client.get("/console")
    assert page.status == 200
    found = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert found is not None
    return found[1]


async def _subscribe(daemon: Daemon, tenant: str, event_id: str) -> None:
    now = datetime.now(UTC)
    event = subscription_event(
        "customer.subscription.created",
        event_id=event_id,
        tenant=tenant,
        current_period_start=int((now - timedelta(days=2)).timestamp()),
        current_period_end=int((now + timedelta(days=28)).timestamp()),
    )
    assert (await daemon.post(event))[1]["outcome"] == "applied"


async def test_pages_need_a_session(daemon: Daemon) -> None:
    for path in ("/console", "/console/fleet", "/console/tenants/t", "/console/decisions/x"):
        response = await daemon.client.get(path, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/console/sign-in"), path
    refused = await daemon.client.post("/console/sign-in", data={"token": "nope", "actor": "ana"})
    assert refused.status == 401 and "token: not a console token" in await refused.text()
    nameless = await daemon.client.post("/console/sign-in", data={"token": READER, "actor": ""})
    assert nameless.status == 400 and "actor:" in await nameless.text()
    forged = await daemon.client.get(
        "/console", headers={"Cookie": "tiergate_console=e30.forged"}, allow_redirects=False
    )
    assert forged.status == 303


async def test_tenant_controlled_strings_are_escaped(daemon: Daemon) -> None:
    await _subscribe(daemon, EVIL, f"evt_{EVIL}")
    await _sign_in(daemon, READER)
    for path in (f"/console?q={quote(EVIL)}", f"/console/tenants/{quote(EVIL, safe='')}"):
        response = await daemon.client.get(path)
        text = await response.text()
        assert response.status == 200, text
        assert EVIL not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none'
        assert "<script" not in text.lower()


async def test_a_reader_reads_but_cannot_change(daemon: Daemon) -> None:
    await _subscribe(daemon, "t_alice", "evt_alice_1")
    csrf = await _sign_in(daemon, READER)
    page = await (await daemon.client.get("/console/tenants/t_alice")).text()
    assert 'id="paid-tier">pro<' in page and "evt_alice_1" in page and "Add override" not in page
    assert 'id="credits"' not in page and "Credits: cost" not in page  # this catalog sells none
    response = await daemon.client.post(
        "/console/tenants/t_alice/overrides",
        data={"csrf": csrf, "feature": "sso", "value": "true", "reason": "x"},
    )
    assert response.status == 403
    assert await daemon.client.get("/v1/tenants/t_alice/overrides", headers=AUTH) is not None


async def test_an_operator_adds_and_removes_an_override_audited_with_csrf(daemon: Daemon) -> None:
    await _subscribe(daemon, "t_alice", "evt_alice_1")
    csrf = await _sign_in(daemon, OPERATOR, actor="bo")
    form = {"feature": "api_calls", "value": "5000000", "reason": "migration", "days": "14"}
    stale = await daemon.client.post("/console/tenants/t_alice/overrides", data={**form, "csrf": "stale"})
    assert stale.status == 400 and "csrf" in await stale.text()
    bad = await daemon.client.post(
        "/console/tenants/t_alice/overrides", data={**form, "csrf": csrf, "value": "lots"}
    )
    assert bad.status == 400 and "value:" in await bad.text()
    added = await daemon.client.post(
        "/console/tenants/t_alice/overrides", data={**form, "csrf": csrf}, allow_redirects=False
    )
    assert (added.status, added.headers["Location"]) == (303, "/console/tenants/t_alice")
    page = await (await daemon.client.get("/console/tenants/t_alice")).text()
    assert re.search(r'id="feature-api_calls">.*?5000000.*?override', page, re.S)
    removed = await daemon.client.post(
        "/console/tenants/t_alice/overrides/api_calls/remove", data={"csrf": csrf, "reason": "done"}
    )
    assert removed.status == 200
    audit: list[tuple[Any, ...]] = await daemon.mirror.read(
        lambda sql: [
            tuple(r)
            for r in sql.execute("SELECT action, actor, reason FROM override_audit ORDER BY id").fetchall()
        ]
    )
    assert audit == [("set", "bo", "migration"), ("remove", "bo", "done")]


async def test_the_decision_page_names_the_stripe_event(daemon: Daemon) -> None:
    await _subscribe(daemon, "t_alice", "evt_alice_1")
    record = {
        "decision_id": "abc-7",
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "decision": {
            "tenant": "t_alice",
            "feature": "sso",
            "quantity": 1,
            "allow": False,
            "reason": "not_in_plan",
            "tier": "pro",
            "paid_tier": "pro",
        },
        "input": {
            "tenant": "t_alice",
            "feature": "sso",
            "quantity": 1,
            "now": "2026-12-01T00:00:00Z",
            "account": None,
            "usage": {},
            "period": {"start": "2026-12-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
            "replica": {"age_seconds": 0},
            "overrides": {},
        },
        "policy_revision": "r1",
        "replica": {"position": 1, "data_as_of": None},
        "account_version": 1,
    }
    shipped = await daemon.client.post("/v1/decisions/batch", json={"decisions": [record]}, headers=AUTH)
    assert shipped.status == 200
    await _sign_in(daemon, READER)
    tenant = await (await daemon.client.get("/console/tenants/t_alice")).text()
    assert '/console/decisions/abc-7"' in tenant
    page = await daemon.client.get("/console/decisions/abc-7")
    text = await page.text()
    assert page.status == 200 and "Stripe event <code>evt_alice_1</code>" in text
    missing = await daemon.client.get("/console/decisions/nope")
    assert missing.status == 404


async def test_the_fleet_page_lists_a_following_sidecar(daemon: Daemon) -> None:
    headers = {**AUTH, "X-Tiergate-Follower": "pod-7:42"}
    assert (await daemon.client.get("/v1/feed/changes?since=0", headers=headers)).status == 200
    await _sign_in(daemon, READER)
    page = await (await daemon.client.get("/console/fleet")).text()
    assert "pod-7:42" in page and 'id="feed-head">0<' in page


async def test_signing_out_ends_the_session(daemon: Daemon) -> None:
    csrf = await _sign_in(daemon, READER)
    out = await daemon.client.post("/console/sign-out", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303
    assert (await daemon.client.get("/console", allow_redirects=False)).status == 303
