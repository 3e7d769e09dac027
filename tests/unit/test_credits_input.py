"""`input.credits` (pure): exact checks per applicable tier and override, pending usage (holds included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from tiergate.catalog import Quota, load_catalog
from tiergate.feed import FeedCreditGrant, FeedCredits
from tiergate.policy.credits_input import (
    CreditPrices,
    balances,
    credits_input,
)

ROOT = Path(__file__).parents[2]
PRICES = CreditPrices(load_catalog(ROOT / "tests" / "integration" / "credits" / "plans.yaml"))
NOW = datetime(2026, 12, 8, tzinfo=UTC)
STATE = FeedCredits(
    tenant="t",
    credit_type="ai_credits",
    debt=Decimal("0.5"),
    grants=[
        FeedCreditGrant(
            remaining=10, effective_at=NOW - timedelta(days=1), expires_at=NOW + timedelta(days=2)
        ),
        FeedCreditGrant(remaining=Decimal("2.25"), effective_at=NOW + timedelta(days=1)),  # not yet
    ],
)


def checks(**given: Any) -> Any:
    values: dict[str, Any] = {
        "feature": "gpt4_tokens",
        "quantity": 1000,
        "account_tier": "pro",
        "states": {"ai_credits": STATE},
        "pending": {},
        "override_value": None,
        "now": NOW,
        **given,
    }
    return credits_input(PRICES, **values)


def test_each_applicable_tier_is_checked_exactly_against_the_available_balance() -> None:
    found = checks()
    assert found == {
        "tiers": {
            "free": {"type": "ai_credits", "cost": 3, "sufficient": True},  # 1000 x 0.003
            "pro": {"type": "ai_credits", "cost": 2, "sufficient": True},
        },
        "balances": {"ai_credits": {"balance": "9.5", "changes_at": "2026-12-09T00:00:00Z"}},
    }
    assert checks(feature="api_calls") is None  # not credit-priced anywhere
    assert checks(quantity=3167)["tiers"]["free"] == {
        "type": "ai_credits",
        "cost": "9.501",
        "sufficient": False,
    }


def test_pending_usage_and_holds_leave_the_balance_as_the_daemon_will_debit() -> None:
    found = checks(pending={"images": 3, "gpt4_tokens": Decimal("250")})  # holds are pending usage
    # pro prices: 3 images x 1 + 250 x 0.002 = 3.5 pending; 9.5 - 3.5 = 6
    assert found is not None and found["balances"] == {
        "ai_credits": {"balance": 6, "changes_at": "2026-12-09T00:00:00Z"}
    }
    assert found["tiers"]["pro"]["sufficient"] is True


def test_an_override_that_prices_the_feature_is_checked_too() -> None:
    found = checks(override_value=Quota(credits={"ai_credits": 5}), quantity=2)
    assert found is not None and found["override"] == {"type": "ai_credits", "cost": 10, "sufficient": False}


def test_the_period_end_bounds_answers_already() -> None:
    found = checks(period_end="2026-12-09T00:00:00Z")
    assert found is not None and found["balances"]["ai_credits"]["changes_at"] is None


def test_balances() -> None:
    assert balances(
        PRICES,
        account_tier=None,
        states={"ai_credits": STATE},
        pending={"images": 1},
        now=NOW,
    ) == {
        "ai_credits": {"balance": "7.5", "next_expiry": "2026-12-10T00:00:00Z"}  # free: an image costs 2
    }
