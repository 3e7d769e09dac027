"""Checkout options (catalog defaults and per request) and the proration preview, against the recording fake.

Each test asserts the exact form parameters the `stripe` library sent, as Stripe's API names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.fake_stripe import Call, RecordingStripeHTTP, fixture
from tests.integration.billing.conftest import (
    API_TOKEN,
    CHECKOUT,
    PERIOD_END,
    UNSOLD,
    Billing,
    preview_invoice,
    subscription,
)
from tests.integration.daemon.conftest import ROOT, make_settings
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.billing.stripe_actions import StripeBillingActions

SELLING = """
checkout:
  allow_promotion_codes: true
  automatic_tax: true
  tax_id_collection: true
  billing_address_collection: required
"""


def options(call: Call) -> dict[str, str]:
    """The parameters beyond the ones every session carries (tested in test_actions_fake.py)."""
    base = {"mode", "customer", "client_reference_id", "line_items", "subscription_data", "metadata"}
    base |= {"success_url", "cancel_url"}
    return {k: v for k, v in call.params.items() if k.split("[")[0] not in base}


@pytest.fixture
async def selling(aiohttp_client: Any, tmp_path: Path, recording: RecordingStripeHTTP) -> Billing:
    """The billing API over the sample catalog with every Checkout option on by default."""
    sample = (ROOT / "plans" / "plans.yaml").read_text()
    plans = tmp_path / "plans.yaml"
    plans.write_text(sample[: sample.index("\ncheckout:")] + SELLING)
    settings = make_settings(
        tmp_path / "mirror.db",
        "http://127.0.0.1:9",
        api_token=SecretStr(API_TOKEN),
        stripe_refetch=False,
        plans=plans,
    )
    actions = StripeBillingActions("sk_test_billing", api_base="https://api.stripe.com", http=recording)
    return Billing(await aiohttp_client(create_app(settings, actions=actions)), recording)


async def test_the_sample_catalog_adds_no_option(billing: Billing) -> None:
    status, _ = await billing.post("/v1/checkout/sessions", CHECKOUT)
    assert status == 201
    assert options(billing.stripe.only("POST", "/v1/checkout/sessions")) == {}


async def test_catalog_defaults_reach_checkout_with_the_customer_updates_stripe_needs(
    selling: Billing,
) -> None:
    status, _ = await selling.post("/v1/checkout/sessions", CHECKOUT)
    assert status == 201
    assert options(selling.stripe.only("POST", "/v1/checkout/sessions")) == {
        "allow_promotion_codes": "true",
        "automatic_tax[enabled]": "true",
        "tax_id_collection[enabled]": "true",
        "billing_address_collection": "required",
        "customer_update[address]": "auto",
        "customer_update[name]": "auto",
    }


async def test_a_request_turns_catalog_defaults_off_and_on(selling: Billing) -> None:
    off = {"allow_promotion_codes": False, "automatic_tax": False, "tax_id_collection": False}
    status, _ = await selling.post(
        "/v1/checkout/sessions", {**CHECKOUT, **off, "billing_address_collection": "auto"}
    )
    assert status == 201
    assert options(selling.stripe.only("POST", "/v1/checkout/sessions")) == {
        "billing_address_collection": "auto"
    }


async def test_a_request_turns_an_option_on(billing: Billing) -> None:
    status, _ = await billing.post("/v1/checkout/sessions", {**CHECKOUT, "automatic_tax": True})
    assert status == 201
    assert options(billing.stripe.only("POST", "/v1/checkout/sessions")) == {
        "automatic_tax[enabled]": "true",
        "customer_update[address]": "auto",
    }


async def test_a_promotion_code_is_looked_up_and_replaces_the_code_box(selling: Billing) -> None:
    promo = fixture("promotion_code", id="promo_spring", code="SPRING", active=True)
    selling.stripe.lists["promotion_codes"] = lambda call: (
        [promo] if call.params.get("code") == "SPRING" else []
    )
    status, _ = await selling.post("/v1/checkout/sessions", {**CHECKOUT, "promotion_code": "SPRING"})
    assert status == 201
    lookup = selling.stripe.only("GET", "/v1/promotion_codes")
    assert lookup.params == {"code": "SPRING", "active": "true", "limit": "1"}
    sent = options(selling.stripe.only("POST", "/v1/checkout/sessions"))
    assert sent["discounts[0][promotion_code]"] == "promo_spring"
    assert "allow_promotion_codes" not in sent  # Stripe refuses a discount with the code box

    status, body = await selling.post("/v1/checkout/sessions", {**CHECKOUT, "promotion_code": "NOPE"})
    assert (status, body["error"]["field"]) == (400, "promotion_code")
    assert "'NOPE'" in body["error"]["message"]


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ({"promotion_code": "promo_123"}, {"discounts[0][promotion_code]": "promo_123"}),  # an id: no lookup
        ({"coupon": "launch50"}, {"discounts[0][coupon]": "launch50"}),
        ({"currency": "eur"}, {"currency": "eur"}),
        (
            {"currency": "usd", "billing_address_collection": "required"},
            {"currency": "usd", "billing_address_collection": "required"},
        ),
    ],
)
async def test_discounts_and_currency_as_stripe_names_them(
    billing: Billing, given: dict[str, Any], sent: dict[str, str]
) -> None:
    status, _ = await billing.post("/v1/checkout/sessions", {**CHECKOUT, **given})
    assert status == 201
    assert options(billing.stripe.only("POST", "/v1/checkout/sessions")) == sent
    assert billing.stripe.sent("GET", "/v1/promotion_codes") == []


@pytest.mark.parametrize(
    ("given", "field", "says"),
    [
        *UNSOLD,
        ({"currency": "jpy"}, "currency", "allowed currencies: ['eur', 'usd']"),
        ({"tier": "starter", "currency": "eur"}, "currency", "allowed currencies: ['usd']"),
        ({"currency": "EUR"}, "currency", "pattern"),
        ({"coupon": "a", "promotion_code": "b"}, "coupon", "not both"),
        ({"coupon": "a", "allow_promotion_codes": True}, "allow_promotion_codes", "not both"),
        ({"coupon": "no spaces"}, "coupon", "pattern"),
        ({"billing_address_collection": "always"}, "billing_address_collection", "'auto' or 'required'"),
    ],
)
async def test_options_stripe_would_refuse_are_400_naming_the_field(
    billing: Billing, given: dict[str, Any], field: str, says: str
) -> None:
    status, body = await billing.post("/v1/checkout/sessions", {**CHECKOUT, **given})
    assert (status, body["error"]["field"]) == (400, field)
    assert says in body["error"]["message"]
    assert billing.stripe.sent("POST", "/v1/checkout/sessions") == []


async def test_preview_of_an_upgrade_sends_the_change_and_changes_nothing(billing: Billing) -> None:
    await billing.seed(tier="starter", quantity=2)
    billing.stripe.answer(
        "GET", "/v1/subscriptions/sub_1", subscription(lookup_key="starter_month", quantity=2)
    )
    billing.stripe.answer("POST", "/v1/invoices/create_preview", preview_invoice(7900))
    status, body = await billing.post("/v1/subscriptions/t_acme/preview", {"tier": "pro"})
    assert status == 200, body
    call = billing.stripe.only("POST", "/v1/invoices/create_preview")
    at = body["proration_date"]
    assert call.params == {
        "subscription": "sub_1",
        "subscription_details[items][0][id]": "si_1",
        "subscription_details[items][0][price]": "price_pro_month",
        "subscription_details[items][0][quantity]": "2",
        "subscription_details[proration_behavior]": "create_prorations",
        "subscription_details[proration_date]": str(at),
    }
    # create_prorations (the default): nothing is charged now, the prorations ride the next invoice.
    assert body == {
        "tenant": "t_acme",
        "tier": "pro",
        "interval": "month",
        "quantity": 2,
        "effective": "now",
        "amount_due_now": 0,
        "currency": "usd",
        "proration_amount": 3000,
        "proration_behavior": "create_prorations",
        "proration_date": at,
        "next_invoice": {"amount_due": 7900, "at": PERIOD_END},
    }
    assert billing.stripe.sent("POST", "/v1/subscriptions/sub_1") == []
    account = await billing.account()
    assert account is not None and account.tier == "starter"


async def test_preview_with_always_invoice_is_the_amount_charged_now(
    aiohttp_client: Any, tmp_path: Path, recording: RecordingStripeHTTP
) -> None:
    settings = make_settings(
        tmp_path / "mirror.db",
        "http://127.0.0.1:9",
        api_token=SecretStr(API_TOKEN),
        stripe_refetch=False,
        proration_behavior="always_invoice",
    )
    actions = StripeBillingActions("sk_test_billing", api_base="https://api.stripe.com", http=recording)
    billing = Billing(await aiohttp_client(create_app(settings, actions=actions)), recording)
    await billing.seed(tier="starter")
    recording.answer("GET", "/v1/subscriptions/sub_1", subscription(lookup_key="starter_month"))
    recording.answer("POST", "/v1/invoices/create_preview", preview_invoice(3000))
    status, body = await billing.post("/v1/subscriptions/t_acme/preview", {"quantity": 3})
    assert status == 200
    assert (body["amount_due_now"], body["proration_behavior"], "next_invoice" in body) == (
        3000,
        "always_invoice",
        False,
    )
    call = recording.only("POST", "/v1/invoices/create_preview")
    assert call.params["subscription_details[items][0][price]"] == "price_starter_month"
    assert call.params["subscription_details[items][0][quantity]"] == "3"


async def test_preview_of_a_downgrade_charges_nothing_until_the_period_end(billing: Billing) -> None:
    await billing.seed(tier="pro")
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription(lookup_key="pro_month"))
    status, body = await billing.post("/v1/subscriptions/t_acme/preview", {"tier": "starter"})
    assert status == 200
    assert (body["effective"], body["amount_due_now"], body["starts_at"]) == ("period_end", 0, PERIOD_END)
    assert billing.stripe.sent("POST", "/v1/invoices/create_preview") == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [({}, 400, "bad_request"), ({"tier": "starter"}, 409, "conflict"), ({"quantity": 0}, 400, "bad_request")],
)
async def test_preview_rejections(billing: Billing, body: dict[str, Any], status: int, code: str) -> None:
    await billing.seed(tier="starter")
    got, answer = await billing.post("/v1/subscriptions/t_acme/preview", body)
    assert (got, answer["error"]["code"]) == (status, code)
    got, answer = await billing.post("/v1/subscriptions/t_nobody/preview", {"tier": "pro"})
    assert (got, answer["error"]["code"]) == (409, "no_subscription")


async def test_a_stripe_refusal_of_the_preview_is_502_with_its_message(billing: Billing) -> None:
    await billing.seed(tier="starter")
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", subscription(lookup_key="starter_month"))
    billing.stripe.fail("POST", "/v1/invoices/create_preview", 400, "No such price")
    status, body = await billing.post("/v1/subscriptions/t_acme/preview", {"tier": "pro"})
    assert (status, body["error"]["code"]) == (502, "stripe_error")
    assert "No such price" in body["error"]["message"]
