"""checkout.session.completed -> subscription -> a sidecar's decision, with signed fixture payloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from tests.integration.billing.conftest import API_TOKEN, decision, eventually, follower, subscription
from tests.integration.daemon.conftest import FakeStripe, make_settings
from tests.stripe_payloads import load_event, signed, subscription_event
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.state import MIRROR


async def test_checkout_completed_then_subscription_reaches_the_sidecar(
    aiohttp_client: Any, tmp_path: Path, fake_stripe: FakeStripe
) -> None:
    settings = make_settings(tmp_path / "mirror.db", fake_stripe.url, api_token=SecretStr(API_TOKEN))
    daemon = await aiohttp_client(create_app(settings))
    sidecar = await follower(aiohttp_client, tmp_path, daemon)
    assert (await decision(sidecar, "t_bought", "sso"))["allow"] is False  # the free tier

    # What Stripe holds once Checkout completed: the daemon fetches it (the tenant came via Checkout).
    live = subscription("sub_fixtureAlice01", lookup_key="pro_month", tenant="t_bought")
    live["customer"] = "cus_fixtureAlice01"
    live["metadata"] = {}  # only client_reference_id names the tenant
    fake_stripe.subscriptions["sub_fixtureAlice01"] = live
    checkout = load_event("checkout.session.completed")
    checkout["data"]["object"]["client_reference_id"] = "t_bought"
    raw, headers = signed(checkout)
    response = await daemon.post("/webhooks/stripe", data=raw, headers=headers)
    assert response.status == 200 and (await response.json())["outcome"] == "refetched"

    # The subscription's own event follows (no tenant in it): the customer link resolves it.
    created = subscription_event("customer.subscription.created", tenant=None, lookup_key="pro_month")
    created["data"]["object"]["metadata"] = {}
    created["created"] = checkout["created"] + 1
    raw, headers = signed(created)
    assert (await daemon.post("/webhooks/stripe", data=raw, headers=headers)).status == 200

    account = await daemon.app[MIRROR].transact(lambda txn: txn.account("t_bought"))
    assert account is not None and (account.tier, account.status) == ("pro", "active")

    async def sso_allowed() -> bool:
        return bool((await decision(sidecar, "t_bought", "sso"))["allow"])

    await eventually(sso_allowed)
    entitlements = await (await sidecar.get("/v1/entitlements/t_bought")).json()
    assert entitlements["tier"] == "pro" and entitlements["pending_change"] is None
