"""The console in a real browser (Playwright from PyPI driving Debian's Chromium), against a real
daemon and a sidecar following it on 127.0.0.1: sign in, search, watch a webhook change the tier,
add an override from the keyboard and see the sidecar's answer change, open a denial's
explanation naming the Stripe event, meet no console errors, reach every control by keyboard.

With TIERGATE_CONSOLE_SCREENSHOTS=DIR it also saves the pages' screenshots there (docs/console.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from tests.integration.usage.conftest import (
    DaemonServer,
    SidecarClient,
    SidecarFactory,
    eventually,
    start_daemon,
)
from tests.stripe_payloads import customer_event, invoice_event, signed, subscription_event

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPERATOR = "console-operator-token-for-the-browser-01"
TENANT = "t_alice"

async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (make venv)")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no {CHROMIUM}: `make chromium` installs Debian's package"
)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonServer]:
    running = await start_daemon(tmp_path, console_operator_token=SecretStr(OPERATOR))
    yield running
    await running.server.close()


@pytest.fixture
async def browser_page() -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of a fresh Chromium, and the errors its console and scripts report."""
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 720})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            await browser.close()


def _period() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "current_period_start": int((now - timedelta(days=3)).timestamp()),
        "current_period_end": int((now + timedelta(days=27)).timestamp()),
    }


async def _webhook(daemon: DaemonServer, event: dict[str, Any]) -> None:
    raw, headers = signed(event)
    async with (
        aiohttp.ClientSession() as session,
        session.post(daemon.url + "/webhooks/stripe", data=raw, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()


async def _answer(sidecar: SidecarClient, feature: str) -> dict[str, Any]:
    body: dict[str, Any] = await (await sidecar.get(f"/v1/check?tenant={TENANT}&feature={feature}")).json()
    return body


async def _shot(page: Any, name: str) -> None:
    folder = os.environ.get("TIERGATE_CONSOLE_SCREENSHOTS")
    if folder:
        await page.screenshot(path=str(Path(folder) / f"{name}.png"))


async def _tab_through(page: Any) -> set[str]:
    """Press Tab until focus comes back round; the ids (or names) of everything it reached."""
    reached: set[str] = set()
    for _ in range(200):
        await page.keyboard.press("Tab")
        key = await page.evaluate(
            "() => { const e = document.activeElement; return e === document.body ? null :"
            " (e.id || e.getAttribute('name') || e.getAttribute('href') || e.textContent.trim()); }"
        )
        if key is None or key in reached:
            if reached:
                break
            continue
        reached.add(key)
    return reached


async def _controls(page: Any) -> set[str]:
    keys: list[str] = await page.eval_on_selector_all(
        "a[href], button, input:not([type=hidden]), select",
        "els => els.map(e => e.id || e.getAttribute('name') || e.getAttribute('href') || e.textContent.trim())",
    )
    return set(keys)


async def test_support_in_a_real_browser(
    daemon: DaemonServer, make_sidecar: SidecarFactory, browser_page: tuple[Any, list[str]]
) -> None:
    page, errors = browser_page
    await _webhook(
        daemon, subscription_event("customer.subscription.created", event_id="evt_starts_pro", **_period())
    )
    await _webhook(daemon, customer_event("customer.updated", email="Alice.Liddell@Example.COM"))
    sidecar = await make_sidecar(daemon.url, decision_record_allow_sample=0.0)
    await eventually(lambda: _paid(sidecar, "pro"))

    # Sign in from the keyboard.
    await page.goto(daemon.url + "/console")
    assert page.url.endswith("/console/sign-in")
    await _shot(page, "sign-in")
    await page.focus("#actor")
    await page.keyboard.type("ana")
    await page.keyboard.press("Tab")
    await page.keyboard.type(OPERATOR)
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"/console$"))

    # Search by the start of the customer's email, in another case; open the tenant.
    await page.fill("#q", "alice.liddell@example")
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"q=alice.liddell"))
    await _shot(page, "search")
    assert "Alice.Liddell@Example.COM" in (await page.text_content("table") or "")
    await page.get_by_role("link", name=TENANT).click()
    assert await page.text_content("#paid-tier") == "pro"
    assert "Alice.Liddell@Example.COM" in (await page.text_content("#customer-email") or "")

    # A webhook moves the tenant to enterprise: the page shows it on the next load.
    upgrade = subscription_event(
        "customer.subscription.updated.upgrade",
        event_id="evt_to_enterprise",
        lookup_key="enterprise_month",
        **_period(),
    )
    await _webhook(daemon, upgrade)
    await page.reload()
    assert await page.text_content("#paid-tier") == "enterprise"
    assert await page.text_content("#applied-tier") == "enterprise"

    # Payment fails past the grace: a sidecar denies SSO, the denial is shipped and listed.
    failed = invoice_event("invoice.payment_failed")
    failed["created"] = int((datetime.now(UTC) - timedelta(days=40)).timestamp())
    await _webhook(daemon, failed)
    overdue = subscription_event(
        "customer.subscription.updated.upgrade",
        event_id="evt_overdue",
        lookup_key="enterprise_month",
        status="past_due",
        **_period(),
    )
    await _webhook(daemon, overdue)
    await eventually(lambda: _denied(sidecar))
    denied = await _answer(sidecar, "sso")
    await eventually(lambda: _listed(daemon, denied["decision_id"]))

    # Add an override from the keyboard: the following sidecar's answer changes.
    await page.reload()
    await _shot(page, "tenant")
    await page.focus("#feature")
    await page.select_option("#feature", "sso")
    await page.keyboard.press("Tab")
    await page.keyboard.type("true")
    await page.keyboard.press("Tab")
    await page.keyboard.type("7")
    await page.keyboard.press("Tab")
    await page.keyboard.type("goodwill while the card is replaced")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert "goodwill while the card is replaced" in await page.content()
    await eventually(lambda: _allowed(sidecar))

    # Every control of the tenant page is reachable with Tab.
    missing = await _controls(page) - await _tab_through(page)
    assert missing == set(), f"not reachable by keyboard: {missing}"

    # The denial's explanation names the Stripe event behind the account version.
    await page.get_by_role("link", name=re.compile(r"sso: payment_overdue")).first.click()
    await page.wait_for_url(re.compile(r"/console/decisions/"))
    assert "Stripe event evt_overdue" in (await page.text_content("#stripe-event") or "")
    decided_by = await page.text_content("#decided-by") or ""
    assert "rule restriction: the account is past_due: the free tier applied" in decided_by
    await _shot(page, "decision")
    missing = await _controls(page) - await _tab_through(page)
    assert missing == set(), f"not reachable by keyboard: {missing}"

    await page.get_by_role("link", name="Fleet").click()
    assert "Sidecars following this daemon" in await page.content()
    await _shot(page, "fleet")
    assert errors == []


async def _paid(sidecar: SidecarClient, tier: str) -> bool:
    return bool((await _answer(sidecar, "sso")).get("paid_tier") == tier)


async def _denied(sidecar: SidecarClient) -> bool:
    return bool((await _answer(sidecar, "sso"))["reason"] == "payment_overdue")


async def _allowed(sidecar: SidecarClient) -> bool:
    return bool((await _answer(sidecar, "sso"))["allow"])


async def _listed(daemon: DaemonServer, decision_id: str) -> bool:
    found = await daemon.mirror.read(
        lambda sql: sql.execute(
            "SELECT 1 FROM decision_records WHERE decision_id = ?", [decision_id]
        ).fetchone()
    )
    return found is not None
