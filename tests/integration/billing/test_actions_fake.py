"""The billing API against a recording fake Stripe HTTP client: the exact parameters sent, then the mirror."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fake_stripe import Call, fixture
from tests.integration.billing.conftest import (
    CHECKOUT,
    PERIOD_END,
    UNSOLD,
    Billing,
    change_now_params,
    subscription,
)
from tests.integration.daemon.conftest import make_settings
from tiergate.sync_daemon.app import create_app


async def test_checkout_creates_the_customer_then_a_subscription_session(billing: Billing) -> None:
    billing.stripe.answer("POST", "/v1/customers", {"id": "cus_new"})
    billing.stripe.answer(
        "POST", "/v1/checkout/sessions", {"id": "cs_1", "url": "https://checkout.stripe.com/c/1"}
    )
    status, body = await billing.post("/v1/checkout/sessions", {**CHECKOUT, "quantity": 3})
    assert (status, body) == (201, {"id": "cs_1", "url": "https://checkout.stripe.com/c/1"})

    customer = billing.stripe.only("POST", "/v1/customers")
    assert customer.params == {"metadata[tenant_id]": "t_new"}
    assert customer.idempotency_key == "tiergate-customer-t_new"
    session = billing.stripe.only("POST", "/v1/checkout/sessions")
    assert session.params == {
        "mode": "subscription",
        "customer": "cus_new",
        "client_reference_id": "t_new",
        "line_items[0][price]": "price_pro_month",
        "line_items[0][quantity]": "3",
        "subscription_data[metadata][tenant_id]": "t_new",
        "subscription_data[trial_period_days]": "14",
        "metadata[tenant_id]": "t_new",
        "metadata[tier]": "pro",
        "metadata[interval]": "month",
        "success_url": "https://app.example/ok",
        "cancel_url": "https://app.example/cancel",
    }
    assert session.idempotency_key and session.idempotency_key.startswith("tiergate-checkout-")
    lookup = billing.stripe.sent("GET", "/v1/prices")[-1]
    assert lookup.params["lookup_keys[0]"] == "pro_month" and lookup.params["active"] == "true"

    # A blind retry reuses the key (and so the session); the customer is now linked and reused.
    await billing.post("/v1/checkout/sessions", {**CHECKOUT, "quantity": 3})
    retry = billing.stripe.sent("POST", "/v1/checkout/sessions")[-1]
    assert retry.idempotency_key == session.idempotency_key and retry.params["customer"] == "cus_new"
    assert len(billing.stripe.sent("POST", "/v1/customers")) == 1


async def test_checkout_for_a_former_subscriber_has_no_trial_and_honours_the_callers_key(
    billing: Billing,
) -> None:
    await billing.seed(status="canceled")
    status, _ = await billing.post(
        "/v1/checkout/sessions",
        {**CHECKOUT, "tenant": "t_acme", "interval": "year"},
        **{"Idempotency-Key": "k1"},
    )
    assert status == 201
    session = billing.stripe.only("POST", "/v1/checkout/sessions")
    assert "subscription_data[trial_period_days]" not in session.params
    assert (
        session.params["customer"] == "cus_acme"
        and session.params["line_items[0][price]"] == "price_pro_year"
    )
    assert billing.stripe.sent("POST", "/v1/customers") == []


async def test_checkout_while_subscribed_is_409_pointing_to_change(billing: Billing) -> None:
    await billing.seed()
    status, body = await billing.post("/v1/checkout/sessions", {**CHECKOUT, "tenant": "t_acme"})
    assert status == 409 and "/v1/subscriptions/t_acme/change" in body["error"]["message"]
    assert "'t_acme' already has a subscription (active, tier 'starter')" in body["error"]["message"]
    assert billing.stripe.calls == []


@pytest.mark.parametrize(("change", "field", "allowed"), UNSOLD)
async def test_unknown_tier_or_interval_is_400_naming_the_allowed_values(
    billing: Billing, change: dict[str, Any], field: str, allowed: str
) -> None:
    """The same table as Checkout's (test_checkout_options.py), for a change of subscription."""
    await billing.seed()
    status, body = await billing.post("/v1/subscriptions/t_acme/change", change)
    assert status == 400 and body["error"]["field"] == field and allowed in body["error"]["message"]
    assert billing.stripe.sent("POST", "/v1/subscriptions/sub_1") == []


@pytest.mark.parametrize("action", ["change", "cancel", "resume"])
async def test_no_subscription_is_409(billing: Billing, action: str) -> None:
    status, body = await billing.post(
        f"/v1/subscriptions/t_nobody/{action}", {"tier": "pro"} if action == "change" else {}
    )
    assert status == 409 and body["error"]["code"] == "no_subscription"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic api-token-for-billing-tests"}]
)
async def test_missing_or_wrong_token_is_401(billing: Billing, headers: dict[str, str]) -> None:
    for path in ("/v1/checkout/sessions", "/v1/portal/sessions", "/v1/subscriptions/t/change"):
        response = await billing.client.post(path, json=CHECKOUT, headers=headers)
        assert response.status == 401, path
        assert "TIERGATE_API_TOKEN" in (await response.json())["error"]["message"]


async def test_without_an_api_token_the_billing_api_is_off(aiohttp_client: Any, tmp_path: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(tmp_path / "m.db", "http://127.0.0.1:9")))
    response = await client.post("/v1/subscriptions/t/cancel", headers={"Authorization": "Bearer x"})
    assert response.status == 503 and (await response.json())["error"]["code"] == "billing_api_disabled"


async def test_portal_needs_a_customer(billing: Billing) -> None:
    status, body = await billing.post(
        "/v1/portal/sessions", {"tenant": "t_acme", "return_url": "https://app.example/"}
    )
    assert status == 409 and "/v1/checkout/sessions" in body["error"]["message"]
    await billing.seed()
    billing.stripe.answer("POST", "/v1/billing_portal/sessions", {"url": "https://billing.stripe.com/p/1"})
    status, body = await billing.post(
        "/v1/portal/sessions", {"tenant": "t_acme", "return_url": "https://app.example/"}
    )
    assert (status, body) == (201, {"url": "https://billing.stripe.com/p/1"})
    sent = billing.stripe.only("POST", "/v1/billing_portal/sessions")
    assert sent.params == {"customer": "cus_acme", "return_url": "https://app.example/"}


async def test_upgrade_applies_now_with_proration_and_updates_the_mirror(billing: Billing) -> None:
    await billing.seed()
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription())
    billing.stripe.answer("POST", "/v1/subscriptions/sub_1", subscription(lookup_key="pro_month", quantity=3))
    status, body = await billing.post("/v1/subscriptions/t_acme/change", {"tier": "pro", "quantity": 3})
    assert status == 200 and body["effective"] == "now"
    assert (body["account"]["tier"], body["account"]["quantity"]) == ("pro", 3)
    update = billing.stripe.only("POST", "/v1/subscriptions/sub_1")
    assert update.params == change_now_params("price_pro_month", 3)
    account = await billing.account()
    assert account is not None and (account.tier, account.quantity, account.pending_tier) == ("pro", 3, None)


async def test_more_seats_on_the_same_tier_is_now(billing: Billing) -> None:
    await billing.seed()
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription())
    billing.stripe.answer("POST", "/v1/subscriptions/sub_1", subscription(quantity=4))
    status, body = await billing.post("/v1/subscriptions/t_acme/change", {"quantity": 4})
    assert status == 200 and body["effective"] == "now" and body["account"]["quantity"] == 4
    assert (
        billing.stripe.only("POST", "/v1/subscriptions/sub_1").params["items[0][price]"]
        == "price_starter_month"
    )


async def test_downgrade_is_scheduled_for_the_period_end_and_shown_pending(billing: Billing) -> None:
    await billing.seed(tier="pro", quantity=2)
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription(lookup_key="pro_month", quantity=2))
    billing.stripe.answer("POST", "/v1/subscription_schedules", _schedule)
    billing.stripe.answer("POST", "/v1/subscription_schedules/sub_sched_1", _schedule)
    status, body = await billing.post("/v1/subscriptions/t_acme/change", {"tier": "starter"})
    assert status == 200 and body["effective"] == "period_end"
    assert body["account"]["tier"] == "pro"  # until the period ends
    assert (body["account"]["pending_tier"], body["account"]["pending_at"]) == (
        "starter",
        "2026-06-27T20:26:40Z",
    )

    created = billing.stripe.only("POST", "/v1/subscription_schedules")
    assert created.params == {"from_subscription": "sub_1"}
    assert created.idempotency_key and created.idempotency_key.startswith("tiergate-schedule-")
    phases = billing.stripe.only("POST", "/v1/subscription_schedules/sub_sched_1").params
    assert phases == {
        "end_behavior": "release",
        "proration_behavior": "none",
        "phases[0][items][0][price]": "price_pro_month",
        "phases[0][items][0][quantity]": "2",
        "phases[0][start_date]": "1780000000",
        "phases[0][end_date]": str(PERIOD_END),
        "phases[1][items][0][price]": "price_starter_month",
        "phases[1][items][0][quantity]": "2",
        "phases[1][duration][interval]": "month",
        "phases[1][duration][interval_count]": "1",
    }
    assert billing.stripe.sent("POST", "/v1/subscriptions/sub_1") == []  # nothing changes now

    # The downgrade taking effect (a webhook, or reconciliation) clears the pending change.
    await _deliver(billing, subscription(lookup_key="starter_month", quantity=2, schedule="sub_sched_1"))
    account = await billing.account()
    assert account is not None and (account.tier, account.pending_tier) == ("starter", None)


async def test_resume_releases_a_pending_downgrade(billing: Billing) -> None:
    await billing.seed(tier="pro", pending_tier="starter", pending_interval="month")
    billing.stripe.answer(
        "GET", "/v1/subscriptions/sub_1", subscription(lookup_key="pro_month", schedule="sub_sched_1")
    )
    status, body = await billing.post("/v1/subscriptions/t_acme/resume")
    assert status == 200 and body["account"]["pending_tier"] is None
    billing.stripe.only("POST", "/v1/subscription_schedules/sub_sched_1/release")
    assert billing.stripe.sent("POST", "/v1/subscriptions/sub_1") == []


async def test_cancel_at_period_end_then_resume_then_cancel_now(billing: Billing) -> None:
    await billing.seed()
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription())
    billing.stripe.answer(
        "POST",
        "/v1/subscriptions/sub_1",
        lambda call: subscription(cancel_at_period_end=call.params["cancel_at_period_end"] == "true"),
    )
    status, body = await billing.post("/v1/subscriptions/t_acme/cancel", {"at_period_end": True})
    assert status == 200 and body["account"]["cancel_at_period_end"] is True
    assert billing.stripe.only("POST", "/v1/subscriptions/sub_1").params == {"cancel_at_period_end": "true"}

    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription(cancel_at_period_end=True))
    status, body = await billing.post("/v1/subscriptions/t_acme/resume")
    assert status == 200 and body["account"]["cancel_at_period_end"] is False
    assert billing.stripe.sent("POST", "/v1/subscriptions/sub_1")[-1].params == {
        "cancel_at_period_end": "false"
    }

    billing.stripe.answer(
        "DELETE", "/v1/subscriptions/sub_1", subscription(status="canceled", canceled_at=PERIOD_END)
    )
    status, body = await billing.post("/v1/subscriptions/t_acme/cancel", {"at_period_end": False})
    assert status == 200 and body["account"]["status"] == "canceled"
    billing.stripe.only("DELETE", "/v1/subscriptions/sub_1")


async def test_nothing_to_change_or_resume_is_409(billing: Billing) -> None:
    await billing.seed()
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription())
    status, _ = await billing.post("/v1/subscriptions/t_acme/change", {"tier": "starter", "quantity": 1})
    assert status == 409
    status, body = await billing.post("/v1/subscriptions/t_acme/resume")
    assert status == 409 and "no cancellation or pending change" in body["error"]["message"]


async def test_a_stripe_error_is_502_with_its_message_and_request_id_and_no_secret(billing: Billing) -> None:
    await billing.seed()
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription())
    billing.stripe.fail(
        "POST",
        "/v1/subscriptions/sub_1",
        402,
        "Your card was declined (key sk_test_leaked123).",
        "card_declined",
    )
    status, body = await billing.post("/v1/subscriptions/t_acme/change", {"tier": "pro"})
    assert status == 502
    error = body["error"]
    assert error["code"] == "stripe_error" and error["stripe_code"] == "card_declined"
    assert "Your card was declined" in error["message"] and error["request_id"].startswith("req_fake")
    assert "sk_test_leaked123" not in str(body) and "sk_test_billing_secret" not in str(body)
    account = await billing.account()
    assert account is not None and account.tier == "starter"  # nothing changed


def _schedule(call: Call) -> dict[str, Any]:
    phases = [
        {"start_date": 1_780_000_000, "end_date": PERIOD_END, "items": []},
        {"start_date": PERIOD_END, "end_date": PERIOD_END + 2_592_000, "items": []},
    ]
    return fixture("subscription_schedule", id="sub_sched_1", phases=phases)


async def _deliver(billing: Billing, sub: dict[str, Any]) -> None:
    from tests.stripe_payloads import signed

    event = fixture("event", id="evt_downgrade", type="customer.subscription.updated", created=PERIOD_END + 5)
    event["data"] = {"object": sub}
    raw, headers = signed(event)
    response = await billing.client.post("/webhooks/stripe", data=raw, headers=headers)
    assert response.status == 200, await response.text()
