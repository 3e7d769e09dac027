"""The billing API's pure rules: prices, live subscriptions, now or at period end, Checkout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tiergate.catalog import load_catalog
from tiergate.errors import BadRequestError, NoSubscriptionError
from tiergate.sync_daemon.billing.rules import (
    change_target,
    change_timing,
    checkout_params,
    idempotency_key,
    live_subscription,
    main_item,
    period_end,
    period_start,
    proration_date,
    sold_price,
)
from tiergate.sync_daemon.mirror.store import MirrorAccount

CATALOG = load_catalog(Path(__file__).parents[2] / "plans" / "plans.yaml")


def account(tier: str = "pro", status: str = "active", quantity: int = 1) -> MirrorAccount:
    return MirrorAccount(
        tenant="acme", tier=tier, status=status, subscription_id="sub_1", interval="month", quantity=quantity
    )


def test_sold_price_names_the_allowed_values() -> None:
    assert sold_price(CATALOG, "pro", "year").lookup_key == "pro_year"
    with pytest.raises(BadRequestError, match=r"allowed tiers: \['enterprise', 'pro', 'starter'\]"):
        sold_price(CATALOG, "free", "month")  # the default tier has no price
    with pytest.raises(BadRequestError, match=r"allowed intervals: \['month', 'year'\]"):
        sold_price(CATALOG, "pro", "week")


@pytest.mark.parametrize("status", ["canceled", "incomplete", "incomplete_expired"])
def test_only_live_subscriptions_can_change(status: str) -> None:
    with pytest.raises(NoSubscriptionError, match="checkout"):
        live_subscription(account(status=status), "acme")
    with pytest.raises(NoSubscriptionError, match="no account"):
        live_subscription(None, "acme")
    assert live_subscription(account(status="past_due"), "acme").status == "past_due"


@pytest.mark.parametrize(
    ("tier", "interval", "quantity", "timing"),
    [
        ("enterprise", None, None, "now"),  # a higher rank applies now, prorated
        ("starter", None, None, "period_end"),  # a lower rank waits for the period end
        (None, None, 5, "now"),  # more seats now
        (None, "year", None, "now"),  # a new interval now
        (None, None, None, None),  # nothing to change
    ],
)
def test_upgrades_apply_now_and_downgrades_at_period_end(
    tier: str | None, interval: str | None, quantity: int | None, timing: str | None
) -> None:
    current = account()
    target = change_target(CATALOG, current, tier, interval, quantity)
    assert change_timing(CATALOG, current, target) == timing


def test_change_target_keeps_what_the_request_leaves_out() -> None:
    target = change_target(CATALOG, account(quantity=3), None, "year", None)
    assert (target.tier, target.interval, target.quantity, target.lookup_key) == (
        "pro",
        "year",
        3,
        "pro_year",
    )


def checkout(trial_days: int) -> dict[str, Any]:
    return checkout_params(
        tenant="acme",
        customer_id="cus_1",
        price_id="price_1",
        quantity=2,
        trial_days=trial_days,
        success_url="https://app/ok",
        cancel_url="https://app/no",
        metadata_key="tenant_id",
        tier="pro",
        interval="month",
    )


def test_checkout_carries_the_tenant_everywhere_a_webhook_may_look() -> None:
    params = checkout(trial_days=14)
    assert params["mode"] == "subscription"
    assert params["client_reference_id"] == "acme"
    assert params["subscription_data"] == {"metadata": {"tenant_id": "acme"}, "trial_period_days": 14}
    assert params["line_items"] == [{"price": "price_1", "quantity": 2}]


def test_no_trial_days_sends_no_trial() -> None:
    assert "trial_period_days" not in checkout(trial_days=0)["subscription_data"]


def test_idempotency_keys_are_stable_per_request_and_scoped() -> None:
    body = {"tier": "pro"}
    assert idempotency_key("change", "acme", None, body) == idempotency_key(
        "change", "acme", None, dict(body)
    )
    assert idempotency_key("change", "acme", None, body) != idempotency_key("change", "globex", None, body)
    assert idempotency_key("change", "acme", "k1", body) != idempotency_key("change", "acme", "k2", body)


def test_main_item_reads_both_api_shapes() -> None:
    current = {"id": "sub_1", "items": {"data": [{"id": "si_1", "price": {"id": "price_9"}, "quantity": 4}]}}
    legacy = {"id": "sub_2", "quantity": 3, "items": {"data": [{"id": "si_2", "plan": {"id": "pro_month"}}]}}
    assert main_item(current) == ("si_1", "price_9", 4)
    assert main_item(legacy) == ("si_2", "pro_month", 3)


PERIOD = (1_000_000, 2_000_000)


@pytest.mark.parametrize(
    ("given", "now", "expected"),
    [
        (None, 1_500_000, None),  # not given: Stripe prorates at the call
        (1_000_000, 1_500_000, 1_000_000),  # the period's first second
        (1_500_000, 1_500_000, 1_500_000),
        (1_500_060, 1_500_000, 1_500_060),  # a clock a minute ahead
        (1_999_999, 2_000_000, 1_999_999),  # the period's last second
    ],
)
def test_a_proration_date_of_the_current_period_that_has_come_is_taken(
    given: int | None, now: int, expected: int | None
) -> None:
    assert proration_date(given, "now", PERIOD, now) == expected


@pytest.mark.parametrize(
    ("given", "timing", "now", "says"),
    [
        (1_500_061, "now", 1_500_000, "is in the future"),
        (999_999, "now", 1_500_000, "is before the current period began (1000000)"),
        (2_000_000, "now", 2_100_000, "is not before the current period's end (2000000)"),
        (1_400_000, "period_end", 1_500_000, "applies only to a change made now"),
    ],
)
def test_a_proration_date_outside_the_period_or_ahead_of_the_clock_is_a_400(
    given: int, timing: Any, now: int, says: str
) -> None:
    with pytest.raises(BadRequestError, match=re.escape(says)) as raised:
        proration_date(given, timing, PERIOD, now)
    assert raised.value.field == "proration_date"


def test_the_period_is_read_from_the_item_else_the_subscription() -> None:
    item = {"current_period_start": 10, "current_period_end": 20}
    assert (period_start({"items": {"data": [item]}}), period_end({"items": {"data": [item]}})) == (10, 20)
    legacy = {"items": {"data": [{}]}, "current_period_start": 30, "current_period_end": 40}
    assert (period_start(legacy), period_end(legacy)) == (30, 40)
    assert (period_start({}), period_end({})) == (None, None)
