"""Automatic top-ups on both mirror backends: a crossing charges the saved card once (Stripe's
idempotency key is the run), a success grants the pack once (its webhook finds it granted), a
decline is a credits.top_up_failed and never a grant; a purchase whose webhooks were lost is
granted by the purchases reconciliation, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.fake_stripe import RecordingStripeHTTP, fixture
from tests.integration.credits.conftest import AUTH, PLANS
from tests.integration.daemon.conftest import AUTH as FEED_AUTH
from tests.integration.daemon.conftest import make_settings
from tests.stripe_payloads import load_event, signed
from tiergate.catalog import load_catalog
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.billing.stripe_actions import StripeBillingActions
from tiergate.sync_daemon.credits.jobs import PurchaseReconciler, sweep
from tiergate.sync_daemon.mirror.store import CustomerLink
from tiergate.sync_daemon.state import MIRROR

CATALOG = load_catalog(PLANS)


@pytest.fixture
async def shop(
    aiohttp_client: Any, mirror_backend: MirrorBackend
) -> tuple[Any, RecordingStripeHTTP, StripeBillingActions]:
    fake = RecordingStripeHTTP()
    fake.lists["payment_methods"] = [fixture("payment_method", id="pm_saved")]
    fake.answer(
        "POST",
        r"/v1/payment_intents",
        lambda call: {"id": f"pi_{call.idempotency_key}", "status": "succeeded"},
    )
    settings = make_settings(
        mirror_backend.path,
        "http://127.0.0.1:9",
        plans=PLANS,
        api_token=SecretStr("api-token-for-credits-tests"),
        stripe_refetch=False,
        **mirror_backend.settings(),
    )
    actions = StripeBillingActions("sk_test_credits", api_base="https://api.stripe.com", http=fake, retries=0)
    client = await aiohttp_client(create_app(settings, actions=actions))
    await client.app[MIRROR].transact(lambda txn: txn.link_customer(CustomerLink("cus_1", "t_1")))
    return client, fake, actions


async def use(client: Any, n: int, prefix: str) -> None:
    events = [
        {"transaction_id": f"{prefix}-{i}", "external_customer_id": "t_1", "code": "images"} for i in range(n)
    ]
    response = await client.post("/v1/usage/batch", json={"events": events}, headers=FEED_AUTH)
    assert response.status == 200


async def credits(client: Any) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get("/v1/tenants/t_1/credits", headers=AUTH)).json()
    return body


async def run_job(client: Any, actions: StripeBillingActions) -> Any:
    return await sweep(client.app[MIRROR], CATALOG, [], datetime.now(UTC), charger=lambda: actions)


async def test_a_crossing_charges_once_and_grants_the_pack_once(shop: Any) -> None:
    client, fake, actions = shop
    rule = await client.put(
        "/v1/tenants/t_1/credits/top-ups/ai_credits", json={"pack": "ai_5000", "below": 10}, headers=AUTH
    )
    assert rule.status == 200, await rule.text()
    grant = {"credit_type": "ai_credits", "amount": 20, "reason": "start"}
    assert (await client.post("/v1/tenants/t_1/credits/grants", json=grant, headers=AUTH)).status == 201
    await use(client, 4, "a")  # 20 -> 12: above the rule
    assert (await run_job(client, actions)).charged == 0
    await use(client, 3, "b")  # 12 -> 6: crosses 10 once (10 -> 8 is the crossing; 8 -> 6 is below already)
    await use(client, 1, "c")  # still below: no second run
    result = await run_job(client, actions)
    assert result.charged == 1
    assert (await run_job(client, actions)).charged == 0  # the run is done
    charge = fake.only("POST", r"/v1/payment_intents")
    assert charge.params["off_session"] == "true" and charge.params["confirm"] == "true"
    assert charge.params["amount"] == "2000" and charge.params["payment_method"] == "pm_saved"
    assert charge.params["metadata[credit_top_up]"] == "true" and charge.idempotency_key.startswith("topup_")
    state = await credits(client)
    assert state["credits"][0]["balance"] == 5004
    assert [r["state"] for r in state["top_up_runs"]] == ["charged"]
    # Stripe's own webhook for the same PaymentIntent: already granted.
    succeeded = load_event("checkout.session.completed") | {
        "id": "evt_topup_pi",
        "type": "payment_intent.succeeded",
    }
    succeeded["data"] = {
        "object": fixture(
            "payment_intent",
            id=f"pi_{charge.idempotency_key}",
            status="succeeded",
            customer="cus_1",
            metadata={"tenant_id": "t_1", "credit_pack": "ai_5000", "credit_top_up": "true"},
        )
    }
    raw, headers = signed(succeeded)
    assert (await client.post("/webhooks/stripe", data=raw, headers=headers)).status == 200
    assert (await credits(client))["credits"][0]["balance"] == 5004


async def test_a_declined_card_is_a_failed_run_and_never_a_grant(shop: Any) -> None:
    client, fake, actions = shop
    fake.failures[("POST", r"/v1/payment_intents")] = (
        402,
        {"error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}},
    )
    await client.put(
        "/v1/tenants/t_1/credits/top-ups/ai_credits", json={"pack": "ai_5000", "below": 10}, headers=AUTH
    )
    await client.post(
        "/v1/tenants/t_1/credits/grants",
        json={"credit_type": "ai_credits", "amount": 12, "reason": "x"},
        headers=AUTH,
    )
    await use(client, 2, "a")  # 12 -> 8
    result = await run_job(client, actions)
    assert (result.charged, result.failed_charges) == (0, 1)
    state = await credits(client)
    assert state["credits"][0]["balance"] == 8
    assert [(r["state"], r["error"]) for r in state["top_up_runs"]] == [("failed", "Your card was declined.")]
    assert (await run_job(client, actions)).failed_charges == 0  # failed once, not retried


async def test_a_bad_rule_is_a_400_naming_the_field(shop: Any) -> None:
    client, _, _ = shop
    for body, field in (
        ({"pack": "gems", "below": 1}, "pack"),
        ({"pack": "ai_5000", "below": "0.0001"}, "below"),
        ({"pack": "ai_5000", "below": -1}, "below"),
    ):
        response = await client.put("/v1/tenants/t_1/credits/top-ups/ai_credits", json=body, headers=AUTH)
        assert response.status == 400 and (await response.json())["error"]["field"] == field
    missing = await client.delete("/v1/tenants/t_1/credits/top-ups/ai_credits", headers=AUTH)
    assert missing.status == 404


async def test_a_purchase_whose_webhooks_were_lost_is_granted_by_reconciliation_once(shop: Any) -> None:
    client, fake, actions = shop

    def session(session_id: str, status: str) -> dict[str, Any]:
        return fixture(
            "checkout.session",
            id=session_id,
            mode="payment",
            payment_status=status,
            customer="cus_1",
            client_reference_id=None,
            metadata={"credit_pack": "ai_5000"},  # the tenant from the customer's link
            payment_intent=f"pi_{session_id}",
            subscription=None,
        )

    fake.lists["checkout/sessions"] = [
        session("cs_lost", "paid"),
        session("cs_unpaid", "unpaid"),
        fixture("checkout.session", mode="subscription"),
    ]
    reconciler = PurchaseReconciler()
    now = datetime.now(UTC)
    first = await sweep(client.app[MIRROR], CATALOG, [], now, charger=lambda: actions, reconciler=reconciler)
    assert first.reconciled == 1
    listed = fake.sent("GET", r"/v1/checkout/sessions")
    assert len(listed) == 1 and listed[0].params["status"] == "complete"
    again = await sweep(
        client.app[MIRROR],
        CATALOG,
        [],
        now + timedelta(minutes=20),
        charger=lambda: actions,
        reconciler=reconciler,
    )
    assert (
        again.reconciled == 0 and len(fake.sent("GET", r"/v1/checkout/sessions")) == 2
    )  # listed, nothing new
    completed = load_event("checkout.session.completed") | {
        "id": "evt_late",
        "type": "checkout.session.completed",
    }
    completed["data"] = {"object": session("cs_lost", "paid")}
    raw, headers = signed(completed)
    assert (
        await client.post("/webhooks/stripe", data=raw, headers=headers)
    ).status == 200  # the late webhook
    state = await credits(client)
    assert state["credits"][0]["balance"] == 5000 and len(state["credits"][0]["grants"]) == 1
