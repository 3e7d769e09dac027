"""Against localstripe (a real process): push the catalog as Plans, upgrade, seats, cancel; the sidecar follows.

localstripe has no Prices, Checkout, portal or schedules: the daemon detects that and answers
501 for those, and this test says so; the fake-client tests cover the calls themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import stripe
from pydantic import SecretStr

from tests.integration.billing.conftest import API_TOKEN, AUTH, Client, decision, eventually, follower
from tests.integration.daemon.conftest import ROOT, make_settings
from tests.localstripe_api import subscribe
from tiergate.catalog import load_catalog
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.billing.stripe_catalog import run_push
from tiergate.sync_daemon.state import RECONCILER


@pytest.fixture
async def stripe_api(localstripe: str) -> AsyncIterator[stripe.StripeClient]:
    http = stripe.AIOHTTPClient()
    yield stripe.StripeClient(
        "sk_test_localstripe", base_addresses={"api": localstripe}, http_client=http, max_network_retries=0
    )
    await http.close_async()  # type: ignore[no-untyped-call]  # the library leaves it untyped


async def _post(daemon: Client, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    response = await daemon.post(path, json=body or {}, headers=AUTH)
    return response.status, await response.json()


async def test_push_upgrade_seats_cancel_resume_reach_the_sidecar(
    aiohttp_client: Any, tmp_path: Path, localstripe: str, stripe_api: stripe.StripeClient
) -> None:
    settings = make_settings(tmp_path / "mirror.db", localstripe, api_token=SecretStr(API_TOKEN))
    catalog = load_catalog(ROOT / "plans" / "plans.yaml")
    changes, result, legacy = await asyncio.to_thread(run_push, settings, catalog, dry_run=False)
    # three tiers x two intervals and two add-ons with three prices: products and prices
    assert legacy and len(result.done) == len(changes) == 14 and result.skipped == []
    again, _, _ = await asyncio.to_thread(run_push, settings, catalog, dry_run=False)
    assert again == []  # idempotent

    await subscribe(stripe_api, "t_acme", "starter_month")
    daemon = await aiohttp_client(create_app(settings))
    assert (await daemon.app[RECONCILER].run()).repairs == 1
    sidecar = await follower(aiohttp_client, tmp_path, daemon)

    async def sso(expected: bool) -> None:
        async def check() -> bool:
            return (await decision(sidecar, "t_acme", "sso"))["allow"] is expected

        await eventually(check)

    await sso(False)  # starter has no SSO
    status, body = await _post(daemon, "/v1/subscriptions/t_acme/change", {"tier": "pro"})
    assert status == 200, body
    assert (body["effective"], body["account"]["tier"]) == ("now", "pro")  # from Stripe's answer, no webhook
    await sso(True)

    status, body = await _post(daemon, "/v1/subscriptions/t_acme/change", {"quantity": 5})
    assert status == 200 and body["account"]["quantity"] == 5 and body["account"]["tier"] == "pro"
    listed = await stripe_api.v1.subscriptions.list_async({"status": "all"})
    assert [(s["plan"]["id"], s["quantity"]) for s in listed.data] == [("pro_month", 5)]

    # A preview's proration_date needs the Prices API's prorations: said (501), and nothing changes.
    prorated = {"quantity": 6, "proration_date": int(time.time())}
    status, body = await _post(daemon, "/v1/subscriptions/t_acme/change", prorated)
    assert status == 501 and "proration_date" in body["error"]["message"], body
    listed = await stripe_api.v1.subscriptions.list_async({"status": "all"})
    assert [s["quantity"] for s in listed.data] == [5]

    # Not in localstripe: a downgrade at the period end (schedules) and Checkout. Said, not faked.
    status, body = await _post(daemon, "/v1/subscriptions/t_acme/change", {"tier": "starter"})
    assert status == 501 and "schedules" in body["error"]["message"]
    checkout = {"tenant": "t_other", "tier": "pro", "success_url": "http://a/ok", "cancel_url": "http://a/no"}
    status, body = await _post(daemon, "/v1/checkout/sessions", checkout)
    assert status == 501 and body["error"]["code"] == "unsupported_by_stripe_api"

    status, body = await _post(daemon, "/v1/subscriptions/t_acme/cancel", {"at_period_end": True})
    assert status == 200 and body["account"]["cancel_at_period_end"] is True

    async def canceling() -> bool:
        found = await (await sidecar.get("/v1/entitlements/t_acme")).json()
        return bool(found["account"] and found["account"]["cancel_at_period_end"])

    await eventually(canceling)
    status, body = await _post(daemon, "/v1/subscriptions/t_acme/resume")
    assert status == 200 and body["account"]["cancel_at_period_end"] is False

    status, body = await _post(daemon, "/v1/subscriptions/t_acme/cancel", {"at_period_end": False})
    assert status == 200 and body["account"]["status"] == "canceled"
    await sso(False)
    assert (await _post(daemon, "/v1/subscriptions/t_acme/cancel"))[0] == 409  # nothing live to cancel
