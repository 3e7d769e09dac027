"""Buying packs and mirroring Stripe credit grants through the daemon's real webhook handler, on
both mirror backends: granted once whatever the order or replay; refunds void only the unspent part."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.fake_stripe import RecordingStripeHTTP, fixture
from tests.integration.billing.conftest import price_book
from tests.integration.credits.conftest import AUTH, PLANS, CreditsDaemon
from tests.integration.daemon.conftest import make_settings
from tests.stripe_payloads import load_event, signed
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.billing.stripe_actions import StripeBillingActions
from tiergate.sync_daemon.credits.ledger import debit, ledger_page
from tiergate.sync_daemon.credits.purchases import refunded_share
from tiergate.sync_daemon.mirror.store import CustomerLink

_ids = itertools.count(1)


def event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    envelope = load_event("checkout.session.completed")
    envelope.update(id=event_id or f"evt_credits_{next(_ids)}", type=kind)
    envelope["data"] = {"object": obj}
    return envelope


def session(session_id: str = "cs_pack_1", paid: bool = True, tenant: str = "t_1") -> dict[str, Any]:
    return fixture(
        "checkout.session",
        id=session_id,
        mode="payment",
        payment_status="paid" if paid else "unpaid",
        customer="cus_1",
        client_reference_id=tenant,
        metadata={"tenant_id": tenant, "credit_pack": "ai_5000"},
        payment_intent=f"pi_{session_id}",
        subscription=None,
    )


def refund(payment_intent: str, refunded: int, paid: int = 2000) -> dict[str, Any]:
    return fixture(
        "charge",
        id=f"ch_{payment_intent}",
        payment_intent=payment_intent,
        amount=paid,
        amount_refunded=refunded,
        refunded=refunded == paid,
        customer="cus_1",
    )


def credit_grant(grant_id: str = "credgr_1", value: int = 1000, **fields: Any) -> dict[str, Any]:
    body = fixture(
        "billing.credit_grant",
        id=grant_id,
        customer="cus_1",
        amount={"type": "monetary", "monetary": {"currency": "usd", "value": value}},
        category="promotional",
        metadata={"tenant_id": "t_1"},
        effective_at=None,
        expires_at=None,
        voided_at=None,
        priority=10,
    )
    return {**body, **fields}


async def post(daemon: CreditsDaemon, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    raw, headers = signed(payload)
    response = await daemon.client.post("/webhooks/stripe", data=raw, headers=headers)
    body: dict[str, Any] = await response.json()
    return response.status, body


async def entries(daemon: CreditsDaemon, tenant: str = "t_1") -> list[tuple[str, Any]]:
    found = await daemon.mirror.read(lambda sql: ledger_page(sql, tenant, 0, 100))
    return [(e["kind"], e["amount"]) for e in found]


async def test_a_paid_pack_is_granted_once_whatever_repeats(credits_daemon: CreditsDaemon) -> None:
    completed = event("checkout.session.completed", session())
    assert (await post(credits_daemon, completed))[0] == 200
    assert (await post(credits_daemon, completed))[0] == 200  # the same delivery again
    # Another event of the same session (an async payment's success), in any order: no second grant.
    assert (await post(credits_daemon, event("checkout.session.async_payment_succeeded", session())))[
        0
    ] == 200
    assert await credits_daemon.balance("t_1") == 5000
    grants = (await credits_daemon.credits("t_1"))["credits"][0]["grants"]
    assert [(g["source"], g["source_ref"], g["category"]) for g in grants] == [
        ("purchase", "cs_pack_1", "paid")
    ]


async def test_an_unpaid_session_grants_when_its_payment_succeeds(credits_daemon: CreditsDaemon) -> None:
    await post(credits_daemon, event("checkout.session.completed", session(paid=False)))
    assert await credits_daemon.balance("t_1") == 0
    await post(credits_daemon, event("checkout.session.async_payment_succeeded", session()))
    assert await credits_daemon.balance("t_1") == 5000


async def test_a_refund_voids_only_the_unspent_part(credits_daemon: CreditsDaemon) -> None:
    await post(credits_daemon, event("checkout.session.completed", session()))
    await credits_daemon.mirror.transact(
        lambda txn: debit(txn, "t_1", "ai_credits", "tx", 4000, datetime.now(UTC))
    )
    await post(credits_daemon, event("charge.refunded", refund("pi_cs_pack_1", 2000)))
    assert await credits_daemon.balance("t_1") == 0
    assert await entries(credits_daemon) == [("grant", 5000), ("debit", -4000), ("void", -1000)]


async def test_partial_refunds_void_their_share_once_each(credits_daemon: CreditsDaemon) -> None:
    await post(credits_daemon, event("checkout.session.completed", session()))
    first = event("charge.refunded", refund("pi_cs_pack_1", 500))
    await post(credits_daemon, first)
    await post(credits_daemon, first)  # replayed
    assert await credits_daemon.balance("t_1") == 3750
    await post(credits_daemon, event("charge.refunded", refund("pi_cs_pack_1", 1000)))  # cumulative: half
    assert await credits_daemon.balance("t_1") == 2500


async def test_a_refund_before_its_purchase_is_applied_when_the_grant_comes(
    credits_daemon: CreditsDaemon,
) -> None:
    assert (await post(credits_daemon, event("charge.refunded", refund("pi_cs_pack_1", 1000))))[0] == 200
    await post(credits_daemon, event("checkout.session.completed", session()))
    assert await credits_daemon.balance("t_1") == 2500
    assert await entries(credits_daemon) == [("grant", 5000), ("void", -2500)]


async def test_stripe_credit_grants_are_mirrored_in_any_order(credits_daemon: CreditsDaemon) -> None:
    await credits_daemon.mirror.transact(lambda txn: txn.link_customer(CustomerLink("cus_1", "t_1")))
    expiry = 1_900_000_000
    # updated before created: the update's object is the whole grant
    await post(credits_daemon, event("billing.credit_grant.updated", credit_grant(expires_at=expiry)))
    await post(credits_daemon, event("billing.credit_grant.created", credit_grant()))
    state = (await credits_daemon.credits("t_1"))["credits"][0]
    assert state["balance"] == 1000 and state["grants"][0]["source"] == "stripe"
    assert state["grants"][0]["category"] == "promotional" and state["grants"][0]["priority"] == 10
    await post(credits_daemon, event("billing.credit_grant.voided", credit_grant(voided_at=expiry - 10)))
    assert await credits_daemon.balance("t_1") == 0
    # a voided grant seen first is mirrored voided: its later `created` grants nothing
    await post(credits_daemon, event("billing.credit_grant.voided", credit_grant("credgr_2", voided_at=1)))
    await post(credits_daemon, event("billing.credit_grant.created", credit_grant("credgr_2")))
    assert await credits_daemon.balance("t_1") == 0


async def test_an_unknown_pack_or_currency_grants_nothing_and_says_so(credits_daemon: CreditsDaemon) -> None:
    odd = session("cs_odd")
    odd["metadata"]["credit_pack"] = "gems_10"
    status, body = await post(credits_daemon, event("checkout.session.completed", odd))
    assert status == 200 and "unknown_pack" in str(body)
    await post(
        credits_daemon,
        event(
            "billing.credit_grant.created",
            credit_grant(amount={"type": "monetary", "monetary": {"currency": "eur", "value": 5}}),
        ),
    )
    assert await credits_daemon.balance("t_1") == 0


def test_a_refunded_share_rounds_up_and_never_exceeds_the_grant() -> None:
    assert refunded_share(5000, 1000, 2000, 3) == 2500
    assert refunded_share(10, 1, 3, 0) == 4  # 3.33 -> 4
    assert refunded_share(10, 5000, 2000, 0) == 10


@pytest.fixture
async def shop(aiohttp_client: Any, mirror_backend: MirrorBackend) -> tuple[Any, RecordingStripeHTTP]:
    fake = RecordingStripeHTTP()
    fake.lists["prices"] = price_book
    settings = make_settings(
        mirror_backend.path,
        "http://127.0.0.1:9",
        plans=PLANS,
        api_token=SecretStr("api-token-for-credits-tests"),
        stripe_refetch=False,
        redirect_hosts="app.example",
        **mirror_backend.settings(),
    )
    actions = StripeBillingActions("sk_test_credits", api_base="https://api.stripe.com", http=fake)
    return await aiohttp_client(create_app(settings, actions=actions)), fake


async def test_checkout_for_a_pack_is_payment_mode_for_its_one_time_price(
    shop: tuple[Any, RecordingStripeHTTP],
) -> None:
    client, fake = shop
    body = {
        "tenant": "t_1",
        "pack": "ai_5000",
        "success_url": "https://app.example/ok",
        "cancel_url": "https://app.example/no",
    }
    response = await client.post("/v1/checkout/sessions", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    sent = fake.only("POST", "/v1/checkout/sessions").params
    assert sent["mode"] == "payment" and sent["line_items[0][price]"] == "price_ai_5000"
    assert sent["metadata[credit_pack]"] == "ai_5000" and sent["metadata[tenant_id]"] == "t_1"
    assert sent["payment_intent_data[setup_future_usage]"] == "off_session"
    unknown = await client.post("/v1/checkout/sessions", json={**body, "pack": "gems"}, headers=AUTH)
    assert unknown.status == 400 and "known: ['ai_5000']" in (await unknown.json())["error"]["message"]
