"""The daemon's billing API on 127.0.0.1 with Stripe behind a recording fake HTTP client or localstripe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.fake_stripe import RecordingStripeHTTP, fixture
from tests.integration.daemon.conftest import (  # noqa: F401 - fixtures shared with the daemon's tests
    FEED_TOKEN,
    ROOT,
    fake_stripe,
    localstripe,
    localstripe_server,
    make_settings,
)
from tiergate.sidecar.app import create_app as create_sidecar
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.billing.stripe_actions import StripeBillingActions
from tiergate.sync_daemon.mirror.store import CustomerLink, MirrorAccount
from tiergate.sync_daemon.state import MIRROR

API_TOKEN = "api-token-for-billing-tests"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PERIOD_START, PERIOD_END = 1_780_000_000, 1_782_592_000
CHECKOUT = {
    "tenant": "t_new",
    "tier": "pro",
    "interval": "month",
    "success_url": "https://app.example/ok",
    "cancel_url": "https://app.example/cancel",
}
# What is not for sale, as Checkout and a change both refuse it: (body fields, field named, says).
UNSOLD: list[tuple[dict[str, Any], str, str]] = [
    ({"tier": "gold"}, "tier", "allowed tiers: ['enterprise', 'pro', 'starter']"),
    ({"tier": "free"}, "tier", "allowed tiers: ['enterprise', 'pro', 'starter']"),  # the default: no price
    ({"interval": "week"}, "interval", "allowed intervals: ['month', 'year']"),
]
Client = TestClient[web.Request, web.Application]


def subscription(
    sub_id: str = "sub_1",
    *,
    lookup_key: str = "starter_month",
    quantity: int = 1,
    tenant: str = "t_acme",
    **fields: Any,
) -> dict[str, Any]:
    """fixtures3's subscription with every field the daemon reads set to a consistent value."""
    interval = lookup_key.rsplit("_", 1)[1]
    price = fixture("price", id=f"price_{lookup_key}", lookup_key=lookup_key)
    price["recurring"]["interval"] = interval
    item = fixture("subscription_item", id="si_1", price=price, quantity=quantity)
    item.update(current_period_start=PERIOD_START, current_period_end=PERIOD_END, subscription=sub_id)
    body = fixture(
        "subscription",
        id=sub_id,
        customer="cus_acme",
        status="active",
        metadata={"tenant_id": tenant},
        cancel_at_period_end=False,
        cancel_at=None,
        canceled_at=None,
        trial_end=None,
        trial_start=None,
        schedule=None,
        latest_invoice=None,
    )
    body["items"] = {"object": "list", "data": [item], "has_more": False, "url": "/v1/subscription_items"}
    return {**body, **fields}


def change_now_params(price: str, quantity: int) -> dict[str, str]:
    """The form parameters of a change made now to `subscription()`'s item, as Stripe names them."""
    return {
        "items[0][id]": "si_1",
        "items[0][price]": price,
        "items[0][quantity]": str(quantity),
        "proration_behavior": "create_prorations",
    }


def preview_invoice(amount_due: int) -> dict[str, Any]:
    """Stripe's preview invoice: a credit for the unused time, a charge for the new item, the next period."""
    invoice = fixture("invoice", amount_due=amount_due, currency="usd", period_end=PERIOD_END)
    line = fixture("line_item")
    credit = {**line, "amount": -1900}  # the unused starter time, credited
    charge = {**line, "amount": 4900}
    regular = {
        **line,
        "amount": 4900,
        "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": False}},
    }
    invoice["lines"] = {"object": "list", "data": [credit, charge, regular], "has_more": False, "url": "/"}
    return invoice


@dataclass
class Billing:
    client: Client
    stripe: RecordingStripeHTTP

    async def post(self, path: str, body: dict[str, Any] | None = None, **headers: str) -> tuple[int, Any]:
        response = await self.client.post(path, json=body or {}, headers={**AUTH, **headers})
        return response.status, await response.json()

    async def account(self, tenant: str = "t_acme") -> MirrorAccount | None:
        return await self.client.app[MIRROR].transact(lambda txn: txn.account(tenant))

    async def seed(
        self, tier: str = "starter", interval: str = "month", quantity: int = 1, **fields: Any
    ) -> None:
        values: dict[str, Any] = {"status": "active", **fields}
        account = MirrorAccount(
            tenant="t_acme",
            tier=tier,
            stripe_customer_id="cus_acme",
            subscription_id="sub_1",
            interval=interval,
            quantity=quantity,
            current_period_start=datetime.fromtimestamp(PERIOD_START, UTC),
            current_period_end=datetime.fromtimestamp(PERIOD_END, UTC),
            stripe_updated=PERIOD_START,
            **values,
        )

        def put(txn: Any) -> None:
            txn.put_account(account)
            txn.link_customer(CustomerLink("cus_acme", "t_acme"))

        await self.client.app[MIRROR].transact(put)


def price_book(call: Any) -> list[dict[str, Any]]:
    """GET /v1/prices?lookup_keys[0]=K answers the price whose id is price_K."""
    key = call.params.get("lookup_keys[0]")
    return [fixture("price", id=f"price_{key}", lookup_key=key)] if key else [fixture("price")]


@pytest.fixture
def recording() -> RecordingStripeHTTP:
    fake = RecordingStripeHTTP()
    fake.lists["prices"] = price_book
    return fake


@pytest.fixture
async def billing(
    aiohttp_client: Any, mirror_backend: MirrorBackend, recording: RecordingStripeHTTP
) -> Billing:
    """The billing API on each mirror backend (SQLite, PostgreSQL)."""
    settings = make_settings(
        mirror_backend.path,
        "http://127.0.0.1:9",
        api_token=SecretStr(API_TOKEN),
        stripe_refetch=False,
        **mirror_backend.settings(),
    )
    actions = StripeBillingActions(
        "sk_test_billing_secret", api_base="https://api.stripe.com", http=recording
    )
    return Billing(await aiohttp_client(create_app(settings, actions=actions)), recording)


async def eventually(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll until true; a generous deadline, never a latency assertion."""
    async with asyncio.timeout(10.0):
        while not await predicate():  # noqa: ASYNC110 - polling HTTP answers, no event to wait on
            await asyncio.sleep(0.05)


async def follower(aiohttp_client: Any, tmp_path: Path, daemon: Client) -> Client:
    """A sidecar that follows `daemon`'s feed with the real policies and catalog."""
    settings = SidecarSettings(
        replica_path=tmp_path / "replica.db",
        plans=ROOT / "plans" / "plans.yaml",
        policies=ROOT / "policies",
        daemon_url=str(daemon.server.make_url("/")),
        feed_token=SecretStr(FEED_TOKEN),
        decision_log_sample=0.0,
    )
    sidecar: Client = await aiohttp_client(create_sidecar(settings))
    return sidecar


async def decision(sidecar: Client, tenant: str, feature: str) -> dict[str, Any]:
    response = await sidecar.get("/v1/check", params={"tenant": tenant, "feature": feature})
    body: dict[str, Any] = await response.json()
    return body
