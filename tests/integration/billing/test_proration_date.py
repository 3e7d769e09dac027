"""POST .../change with /preview's proration_date: Stripe charges what was previewed (recording client)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.billing.conftest import Billing, change_now_params, preview_invoice, subscription
from tiergate.sync_daemon.billing.rules import PRORATION_SKEW_S

DAY = 86_400


def current_subscription(lookup_key: str = "starter_month", **fields: Any) -> dict[str, Any]:
    """The subscription with its period around now: started ten days ago, ends in twenty."""
    body = subscription(lookup_key=lookup_key, **fields)
    now = int(time.time())
    body["items"]["data"][0].update(current_period_start=now - 10 * DAY, current_period_end=now + 20 * DAY)
    return body


async def test_the_change_sends_the_previews_proration_date_to_stripe(billing: Billing) -> None:
    await billing.seed(tier="starter", quantity=2)
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", current_subscription(quantity=2))
    billing.stripe.answer("POST", "/v1/invoices/create_preview", preview_invoice(7900))
    billing.stripe.answer("POST", "/v1/subscriptions/sub_1", current_subscription("pro_month", quantity=2))
    status, preview = await billing.post("/v1/subscriptions/t_acme/preview", {"tier": "pro"})
    assert status == 200, preview
    at = preview["proration_date"]

    status, body = await billing.post(
        "/v1/subscriptions/t_acme/change", {"tier": "pro", "proration_date": at}
    )
    assert status == 200, body
    assert body["effective"] == "now" and body["account"]["tier"] == "pro"
    update = billing.stripe.only("POST", "/v1/subscriptions/sub_1")
    assert update.params == {**change_now_params("price_pro_month", 2), "proration_date": str(at)}
    previewed = billing.stripe.only("POST", "/v1/invoices/create_preview")
    assert previewed.params["subscription_details[proration_date]"] == str(at)


async def test_a_preview_at_a_given_moment_is_priced_at_that_moment(billing: Billing) -> None:
    await billing.seed(tier="starter")
    sub = current_subscription()
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", sub)
    billing.stripe.answer("POST", "/v1/invoices/create_preview", preview_invoice(7900))
    at = sub["items"]["data"][0]["current_period_start"] + DAY  # nine days ago, within the period
    status, body = await billing.post(
        "/v1/subscriptions/t_acme/preview", {"tier": "pro", "proration_date": at}
    )
    assert (status, body["proration_date"]) == (200, at)
    call = billing.stripe.only("POST", "/v1/invoices/create_preview")
    assert call.params["subscription_details[proration_date]"] == str(at)


async def test_a_proration_date_within_the_clock_skew_is_taken(billing: Billing) -> None:
    await billing.seed(tier="starter")
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", current_subscription())
    billing.stripe.answer("POST", "/v1/subscriptions/sub_1", current_subscription(quantity=3))
    at = int(time.time()) + PRORATION_SKEW_S // 2  # another daemon's clock, a little ahead
    status, body = await billing.post(
        "/v1/subscriptions/t_acme/change", {"quantity": 3, "proration_date": at}
    )
    assert status == 200, body
    assert billing.stripe.only("POST", "/v1/subscriptions/sub_1").params["proration_date"] == str(at)


NOW, FUTURE, BEFORE = "now", "future", "before"  # moments resolved against the clock and the period
BAD_DATES = [
    ("a string", {"quantity": 3}, "1780000000", "valid integer"),
    ("a fraction", {"quantity": 3}, 1780000000.5, "valid integer"),
    ("a boolean", {"quantity": 3}, True, "valid integer"),
    ("negative", {"quantity": 3}, -1, "greater than or equal to 0"),
    ("in the future", {"quantity": 3}, FUTURE, "is in the future"),
    ("before the period", {"quantity": 3}, BEFORE, "is before the current period began"),
    ("for a downgrade", {"tier": "starter"}, NOW, "applies only to a change made now"),
]


@pytest.mark.parametrize(("case", "change", "date", "says"), BAD_DATES, ids=[case[0] for case in BAD_DATES])
@pytest.mark.parametrize("action", ["change", "preview"])
async def test_a_bad_proration_date_is_400_and_changes_nothing(
    billing: Billing, action: str, case: str, change: dict[str, Any], date: object, says: str
) -> None:
    await billing.seed(tier="pro", quantity=2)
    sub = current_subscription("pro_month", quantity=2, schedule="sub_sched_1")  # a pending change too
    billing.stripe.answer("GET", "/v1/subscriptions/sub_1", sub)
    now = int(time.time())
    moments = {
        NOW: now,
        FUTURE: now + PRORATION_SKEW_S + 3600,
        BEFORE: sub["items"]["data"][0]["current_period_start"] - 1,
    }
    given = moments[date] if isinstance(date, str) and date in moments else date
    before = await billing.account()

    status, answer = await billing.post(
        f"/v1/subscriptions/t_acme/{action}", {**change, "proration_date": given}
    )
    assert (status, answer["error"]["field"]) == (400, "proration_date"), answer
    assert says in answer["error"]["message"]
    assert [c.method for c in billing.stripe.calls if c.method != "GET"] == []  # no change, no preview
    assert await billing.account() == before
