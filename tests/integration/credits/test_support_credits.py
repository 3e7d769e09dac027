"""Support's tenant lookup and console with credits, on both mirror backends: balances, grants, the
ledger, the answer a sidecar would give a credit-priced feature, and a windowed metric's counter."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.integration.credits.conftest import API_TOKEN, AUTH, PLANS, CreditsDaemon
from tests.integration.daemon.conftest import make_settings
from tiergate.periods import rfc3339, window_bounds
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.cli_support_tools import render_tenant

READER = "console-reader-token-for-credits-0123"
EVIL = "<script>alert(1)</script>"


@pytest.fixture
async def daemon(aiohttp_client: Any, mirror_backend: MirrorBackend, tmp_path: Path) -> CreditsDaemon:
    """The credits catalog with `images` counted per UTC day (a window), a console token."""
    plans = yaml.safe_load(PLANS.read_text(encoding="utf-8"))
    plans["metrics"]["images"]["window"] = "day"
    path = tmp_path / "plans.yaml"
    path.write_text(yaml.safe_dump(plans), encoding="utf-8")
    settings = make_settings(
        mirror_backend.path,
        "http://127.0.0.1:9",
        plans=path,
        api_token=SecretStr(API_TOKEN),
        console_token=SecretStr(READER),
        stripe_refetch=False,
        **mirror_backend.settings(),
    )
    return CreditsDaemon(await aiohttp_client(create_app(settings)))


def _images(tenant: str, prefix: str, n: int, at: datetime | None = None) -> list[dict[str, Any]]:
    stamp = {"timestamp": rfc3339(at)} if at is not None else {}
    return [
        {"transaction_id": f"{prefix}-{i}", "external_customer_id": tenant, "code": "images", **stamp}
        for i in range(n)
    ]


async def _lookup(daemon: CreditsDaemon, tenant: str) -> dict[str, Any]:
    response = await daemon.client.get(f"/v1/tenants/{quote(tenant, safe='')}", headers=AUTH)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_the_lookup_shows_balances_grants_the_ledger_and_the_sidecars_answer(
    daemon: CreditsDaemon,
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    grant = {"credit_type": "ai_credits", "amount": "7.5", "reason": "promo", "expires_at": rfc3339(expires)}
    status, made = await daemon.grant("t_c", grant)
    assert status == 201, made
    await daemon.usage(_images("t_c", "img", 2))  # free tier: 2 credits an image
    body = await _lookup(daemon, "t_c")
    assert body["known"] is True
    [balance] = body["credits"]["balances"]
    assert (balance["credit_type"], balance["balance"], balance["next_expiry"]) == (
        "ai_credits",
        "3.5",
        rfc3339(expires),
    )
    [shown] = balance["grants"]
    assert (shown["id"], shown["amount"], shown["remaining"], shown["expires_at"]) == (
        made["grant"]["id"],
        "7.5",
        "3.5",
        rfc3339(expires),
    )
    entries = body["credits"]["latest_entries"]
    assert [(e["kind"], e["amount"]) for e in entries] == [("debit", -2), ("debit", -2), ("grant", "7.5")]
    assert body["credits"]["ledger_url"] == "/v1/tenants/t_c/credits/ledger"
    features = body["entitlements"]["features"]
    # What a sidecar answers: 2 credits of the 3.5 available, and 0.003 a token.
    assert (features["images"]["allow"], features["images"]["credits"]) == (
        True,
        {"type": "ai_credits", "balance": "3.5", "cost": 2},
    )
    assert features["gpt4_tokens"]["credits"] == {"type": "ai_credits", "balance": "3.5", "cost": "0.003"}
    assert features["api_calls"]["credits"] is None and features["api_calls"]["window"] is None
    text = render_tenant(body)  # `tiergate tenant show`
    assert "allow images           ok                     2/5 2 of 3.5 ai_credits [plan]" in text
    assert f"credits ai_credits: 3.5 available, 1 active grants, next expiry {rfc3339(expires)}" in text


async def test_without_enough_credits_the_lookup_denies_as_a_sidecar_would(daemon: CreditsDaemon) -> None:
    await daemon.grant("t_poor", {"credit_type": "ai_credits", "amount": "1.5", "reason": "promo"})
    features = (await _lookup(daemon, "t_poor"))["entitlements"]["features"]
    images = features["images"]
    assert (images["allow"], images["reason"]) == (False, "insufficient_credits")
    assert images["credits"] == {"type": "ai_credits", "balance": "1.5", "cost": 2}
    assert features["gpt4_tokens"]["allow"] is True  # 0.003 of 1.5
    nothing = (await _lookup(daemon, "t_none"))["entitlements"]["features"]["gpt4_tokens"]
    assert (nothing["allow"], nothing["reason"], nothing["credits"]["balance"]) == (
        False,
        "insufficient_credits",
        0,
    )


async def test_a_windowed_metric_shows_its_windows_counter(daemon: CreditsDaemon) -> None:
    await daemon.grant("t_w", {"credit_type": "ai_credits", "amount": 100, "reason": "promo"})
    now = datetime.now(UTC)
    await daemon.usage(_images("t_w", "old", 2, now - timedelta(days=1)))
    await daemon.usage(_images("t_w", "new", 3))
    body = await _lookup(daemon, "t_w")
    images = body["entitlements"]["features"]["images"]
    today, tomorrow = window_bounds(now, "day", ZoneInfo("UTC"))
    assert images["window"] == {"start": rfc3339(today), "end": rfc3339(tomorrow)}
    assert (images["used"], images["limit"], images["remaining"]) == (3, 5, 2)  # today's 3, not 5
    counters = {(c["period_start"], c["code"]): (c["value"], c["current"]) for c in body["counters"]}
    assert counters[(rfc3339(today), "images")] == (3, True)
    assert counters[(rfc3339(today - timedelta(days=1)), "images")] == (2, False)
    await _console_session(daemon)
    text = await (await daemon.client.get("/console/tenants/t_w")).text()
    assert f"images: 3 of 5 in the window {rfc3339(today)} → {rfc3339(tomorrow)}" in text


async def _console_session(daemon: CreditsDaemon) -> None:
    response = await daemon.client.post(
        "/console/sign-in", data={"token": READER, "actor": "ana"}, allow_redirects=False
    )
    assert response.status == 303, await response.text()


async def test_the_console_shows_credits_escaped_and_pages_the_ledger(daemon: CreditsDaemon) -> None:
    status, _ = await daemon.grant(
        quote(EVIL, safe=""), {"credit_type": "ai_credits", "amount": 200, "reason": EVIL, "actor": EVIL}
    )
    assert status == 201
    await daemon.usage(_images(EVIL, EVIL, 60, datetime.now(UTC) - timedelta(days=1)))
    await _console_session(daemon)
    page = await daemon.client.get(f"/console/tenants/{quote(EVIL, safe='')}")
    text = await page.text()
    assert page.status == 200 and EVIL not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert re.search(r'id="credits-ai_credits">ai_credits: <span class="balance">80</span>', text)
    assert text.count('class="entry"') == 20  # the newest 20, then a link to the rest
    ledger = f"/console/tenants/{quote(EVIL, safe='')}/credits/ledger"
    assert f'href="{ledger}"' in text
    first = await (await daemon.client.get(ledger)).text()
    assert first.count('class="entry"') == 50 and EVIL not in first
    older = re.search(r'credits/ledger\?before=(\d+)">Older entries', first)
    assert older is not None
    rest = await (await daemon.client.get(f"{ledger}?before={older[1]}")).text()
    assert rest.count('class="entry"') == 11 and "Older entries" not in rest  # 60 debits + 1 grant
    ids = [int(i) for i in re.findall(r'<tr class="entry"><td>(\d+)</td>', first + rest)]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 61
    for bad in ("x", "-1", "0", "²", "9" * 30):
        refused = await daemon.client.get(f"{ledger}?before={quote(bad)}")
        assert refused.status == 400 and "before:" in await refused.text(), bad


async def test_a_tenant_without_credits_says_so(daemon: CreditsDaemon) -> None:
    await _console_session(daemon)
    text = await (await daemon.client.get("/console/tenants/t_empty")).text()
    assert "No credits granted." in text and "Latest ledger entries" not in text
    assert (await _lookup(daemon, "t_empty"))["credits"] == {
        "balances": [],
        "latest_entries": [],
        "ledger_url": "/v1/tenants/t_empty/credits/ledger",
    }
