"""Pure mapping and ordering rules of the sync daemon: Stripe payloads -> mirror accounts."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.stripe_payloads import invoice_event, load_event, recorded, subscription_event
from tiergate.catalog import load_catalog
from tiergate.sync_daemon.mirror.store import MirrorAccount
from tiergate.sync_daemon.stripe_sync.reconcile import diff_subscriptions, email_changes
from tiergate.sync_daemon.stripe_sync.translate import (
    CheckoutCompleted,
    CustomerEmail,
    CustomerSeen,
    Ignored,
    PaymentOutcome,
    SubscriptionState,
    Translator,
    decide_payment,
    decide_subscription,
)

ROOT = Path(__file__).parents[2]
T = Translator(load_catalog(ROOT / "plans" / "plans.yaml"))


def _sub(**kw: Any) -> dict[str, Any]:
    obj: dict[str, Any] = subscription_event("customer.subscription.created", **kw)["data"]["object"]
    return obj


def _state(**kw: Any) -> SubscriptionState:
    return T.subscription(_sub(**kw))


@pytest.mark.parametrize(
    ("lookup_key", "price_id", "tier", "interval", "unmapped"),
    [
        ("pro_month", None, "pro", "month", False),
        ("enterprise_year", None, "enterprise", "year", False),
        (None, "starter_month", "starter", "month", False),  # price id equal to a lookup key
        ("team_monthly", "price_team", "price_team", "month", True),  # kept, flagged, raw id as tier
    ],
)
def test_tier_from_price(
    lookup_key: str | None, price_id: str | None, tier: str, interval: str, unmapped: bool
) -> None:
    state = _state(lookup_key=lookup_key, price_id=price_id)
    assert (state.tier, state.interval, state.unmapped_price) == (tier, interval, unmapped)


def test_current_shape_fields() -> None:
    state = _state(quantity=5, cancel_at_period_end=True)
    assert state.subscription_id == "sub_fixtureAlice01"
    assert state.customer_id == "cus_fixtureAlice01"
    assert state.tenant == "t_alice"
    assert state.quantity == 5
    assert state.cancel_at_period_end is True
    assert state.current_period_start == datetime(2026, 1, 1, tzinfo=UTC)
    assert state.current_period_end == datetime(2026, 2, 1, tzinfo=UTC)


def test_localstripe_2017_shape_uses_plan_and_subscription_level_fields() -> None:
    event = json.loads(recorded("customer.subscription.created")["raw_body"])
    sub = event["data"]["object"]
    for obj in (sub, sub["items"]["data"][0]):
        obj["plan"]["id"] = "pro_year"
    sub["quantity"] = 7
    del sub["items"]["data"][0]["quantity"]
    state = T.subscription(sub)
    assert (state.tier, state.interval, state.unmapped_price) == ("pro", "year", False)
    assert state.quantity == 7
    assert state.current_period_start == datetime.fromtimestamp(1795514992, UTC)
    assert state.status == "incomplete"
    assert state.tenant is None  # localstripe's subscription carries no metadata: the customer link maps it


def test_legacy_plan_unmapped_keeps_plan_id() -> None:
    sub = json.loads(recorded("customer.subscription.created")["raw_body"])["data"]["object"]
    state = T.subscription(sub)
    assert (state.tier, state.unmapped_price, state.price_id) == ("m", True, "m")


def test_tenant_from_expanded_customer_and_configured_key() -> None:
    sub = _sub(tenant=None)
    sub["customer"] = {"id": "cus_1", "metadata": {"tenant_id": "t_from_customer"}}
    assert T.subscription(sub).tenant == "t_from_customer"
    assert T.subscription(sub).customer_id == "cus_1"
    other = Translator(T.catalog, "app_user_id")
    assert other.subscription(_sub(tenant=None)).tenant == "42"  # the fixture's own metadata key


def test_event_kinds() -> None:
    checkout = T.event(load_event("checkout.session.completed"))
    assert checkout == CheckoutCompleted("cus_fixtureAlice01", "user_42", "sub_fixtureAlice01")
    failed = T.event(invoice_event("invoice.payment_failed"))
    assert failed == PaymentOutcome("cus_fixtureAlice01", "sub_fixtureAlice01", "t_alice", True, 1)
    paid = T.event(json.loads(recorded("invoice.payment_succeeded")["raw_body"]))
    assert (
        isinstance(paid, PaymentOutcome) and not paid.failed and paid.subscription_id == "sub_1ihjk8o5l7Xvot"
    )
    deleted = {"id": "e", "type": "customer.deleted", "data": {"object": {"id": "cus_9", "metadata": {}}}}
    assert T.event(deleted) == CustomerSeen("cus_9", None, deleted=True)
    assert isinstance(T.event({"id": "e", "type": "charge.refunded", "data": {"object": {}}}), Ignored)
    assert isinstance(T.event(subscription_event("customer.subscription.trial_will_end")), SubscriptionState)


@pytest.mark.parametrize(
    ("customer", "expected"),
    [
        ({"id": "cus_1"}, None),  # no `email` key: the payload says nothing of it
        ({"id": "cus_1", "email": None}, CustomerEmail(None)),
        ({"id": "cus_1", "email": "  "}, CustomerEmail(None)),
        ({"id": "cus_1", "email": " Ana@Example.com "}, CustomerEmail("Ana@Example.com")),
    ],
)
def test_customer_email_from_a_customer_event_or_an_expanded_customer(
    customer: dict[str, Any], expected: CustomerEmail | None
) -> None:
    event = {"id": "e", "type": "customer.updated", "data": {"object": {**customer, "metadata": {}}}}
    seen = T.event(event)
    assert isinstance(seen, CustomerSeen) and seen.email == expected
    state = T.event(subscription_event("customer.subscription.created", customer=customer))
    assert isinstance(state, SubscriptionState) and state.email == expected
    assert T.subscription(subscription_event("customer.subscription.created")["data"]["object"]).email is None


def test_email_changes_lists_only_linked_customers_whose_email_differs() -> None:
    def listed(customer: str, email: CustomerEmail | None) -> SubscriptionState:
        return dataclasses.replace(_state(), customer_id=customer, email=email)

    states = [
        listed("cus_same", CustomerEmail("a@x.io")),
        listed("cus_new", CustomerEmail("b@x.io")),
        listed("cus_gone", CustomerEmail(None)),
        listed("cus_unexpanded", None),
        listed("cus_unlinked", CustomerEmail("c@x.io")),
    ]
    known = {"cus_same": "a@x.io", "cus_new": "old@x.io", "cus_gone": "d@x.io", "cus_unexpanded": "e@x.io"}
    assert email_changes(states, known) == {"cus_new": "b@x.io", "cus_gone": None}


# -- ordering ---------------------------------------------------------------------------------

CREATED = 1_767_225_601


def _applied(created: int = CREATED, **kw: Any) -> MirrorAccount:
    account, outcome = decide_subscription(None, _state(**kw), "t_alice", created)
    assert account is not None and outcome == "applied"
    return account


def test_first_event_creates_the_account() -> None:
    account = _applied(quantity=3)
    assert (account.tier, account.status, account.quantity, account.stripe_updated) == (
        "pro",
        "active",
        3,
        CREATED,
    )
    assert account.subscription_id == "sub_fixtureAlice01" and not account.needs_reconcile


@pytest.mark.parametrize(
    ("created", "fetched", "outcome", "quantity", "needs_reconcile"),
    [
        (CREATED - 1, False, "stale", 1, False),  # older never overwrites newer
        (CREATED - 1, True, "stale", 1, False),  # not even a fetch, if a newer event landed meanwhile
        (CREATED, False, "tie_unresolved", 9, True),  # same second, no fetch: applied, marked
        (CREATED, True, "refetched", 9, False),  # same second, fresh from Stripe: trusted
        (CREATED + 1, False, "applied", 9, False),
    ],
)
def test_ordering(created: int, fetched: bool, outcome: str, quantity: int, needs_reconcile: bool) -> None:
    current = _applied()
    account, got = decide_subscription(current, _state(quantity=9), "t_alice", created, fetched=fetched)
    assert got == outcome
    result = account or current
    assert (result.quantity, result.needs_reconcile) == (quantity, needs_reconcile)
    assert result.stripe_updated == max(created, CREATED)


def test_a_canceled_other_subscription_does_not_displace_a_live_one() -> None:
    current = _applied()
    old = _state(id="sub_old", status="canceled")
    assert decide_subscription(current, old, "t_alice", CREATED + 10) == (None, "other_subscription")
    newer = _state(id="sub_new", lookup_key="enterprise_month")
    account, _ = decide_subscription(current, newer, "t_alice", CREATED + 10)
    assert account is not None and (account.subscription_id, account.tier) == ("sub_new", "enterprise")


def test_payment_episode() -> None:
    current = _applied()
    fail = PaymentOutcome("cus", "sub", "t_alice", failed=True, attempts=1)
    first, _ = decide_payment(current, fail, CREATED + 100)
    assert first is not None and first.past_due_since == datetime.fromtimestamp(CREATED + 100, UTC)
    again, _ = decide_payment(first, PaymentOutcome("cus", "sub", "t_alice", True, 2), CREATED + 200)
    assert again is not None and again.past_due_since == first.past_due_since  # the episode's first failure
    assert again.payment_attempts == 2
    assert decide_payment(again, PaymentOutcome("cus", "sub", "t_alice", False, 0), CREATED + 150) == (
        None,
        "stale",
    )
    paid, _ = decide_payment(again, PaymentOutcome("cus", "sub", "t_alice", False, 0), CREATED + 300)
    assert paid is not None and (paid.past_due_since, paid.payment_attempts) == (None, 0)
    assert decide_payment(None, fail, CREATED) == (None, "no_account")


# -- reconciliation diff ----------------------------------------------------------------------


def test_diff_repairs_drift_and_reports_fields() -> None:
    current = _applied()
    listed = _state(quantity=4, lookup_key="enterprise_month", status="past_due")
    (repair,) = diff_subscriptions([current], [listed], as_of=CREATED + 50)
    assert set(repair.differences) == {"tier", "quantity", "status", "past_due_since"}
    assert repair.differences["quantity"] == (1, 4)
    assert repair.after.past_due_since == listed.current_period_start
    assert repair.before == current


def test_diff_repairs_add_on_drift_since_the_policy_reads_add_ons() -> None:
    current = _applied()
    listed = dataclasses.replace(_state(), addons=(("extra_storage", 2),))
    (repair,) = diff_subscriptions([current], [listed], as_of=CREATED + 50)
    assert repair.differences == {"addons": ((), (("extra_storage", 2),))}
    assert repair.after.addons == (("extra_storage", 2),)


def test_diff_nothing_when_equal_and_clears_needs_reconcile() -> None:
    current = _applied()
    assert diff_subscriptions([current], [_state()], as_of=CREATED + 5) == []
    marked = current.replace(needs_reconcile=True)
    (repair,) = diff_subscriptions([marked], [_state()], as_of=CREATED + 5)
    assert repair.differences == {} and repair.after.needs_reconcile is False


def test_diff_new_tenant_vanished_subscription_and_live_preferred() -> None:
    gone = _applied().replace(tenant="t_gone", subscription_id="sub_gone")
    old = _state(id="sub_a", tenant="t_bob", status="canceled")
    live = _state(id="sub_b", tenant="t_bob", lookup_key="starter_month")
    repairs = {r.tenant: r for r in diff_subscriptions([gone], [live, old], as_of=CREATED)}
    assert repairs["t_bob"].before is None and repairs["t_bob"].after.tier == "starter"
    assert repairs["t_bob"].after.subscription_id == "sub_b"
    assert repairs["t_gone"].after.status == "canceled"


def test_diff_leaves_a_webhook_newer_than_the_listing() -> None:
    newer = _applied(created=CREATED + 100, quantity=8)
    assert diff_subscriptions([newer], [_state(quantity=2)], as_of=CREATED + 50) == []
