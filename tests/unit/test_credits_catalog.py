"""The catalog's credits: types, credit-priced features, tier grants and packs, and `plans check`'s errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tiergate.catalog import parse_catalog
from tiergate.errors import CatalogError

CREDITS = """
default_tier: free
metrics:
  gpt4_tokens: {aggregation: sum, field: tokens}
  seats: {aggregation: latest, field: seats}
credits:
  ai_credits: {name: AI credits, decimals: 2, balance_low: ["100", 10]}
tiers:
  free:
    rank: 0
    features: {gpt4_tokens: {credits: {ai_credits: "0.03"}}, seats: {limit: 3}}
    grants: [{credits: ai_credits, amount: 10000, every: month, rollover: {max: 5000}}]
packs:
  ai_5000:
    credits: ai_credits
    amount: 5000
    price: {lookup_key: ai_5000, unit_amount: 2000, currency: usd}
"""


def test_credits_parse_exactly_and_reach_the_policy_data_as_text() -> None:
    catalog = parse_catalog(CREDITS)
    assert catalog.credit_cost("free", "gpt4_tokens") == ("ai_credits", Decimal("0.03"))
    assert catalog.credit_cost("free", "seats") is None
    assert catalog.pack_for_lookup_key("ai_5000") == "ai_5000"
    grant = catalog.tiers["free"].grants[0]
    assert (grant.amount, grant.every, grant.rollover and grant.rollover.max) == (10000, "month", 5000)
    data = catalog.policy_data()
    assert data["tiers"]["free"]["features"]["gpt4_tokens"] == {"credits": {"ai_credits": "0.03"}}
    assert data["credits"]["ai_credits"]["balance_low"] == [100, 10]


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        (('"0.03"', '"0.003"'), "tiers.free.features.gpt4_tokens.credits.ai_credits", "more than 2 decimals"),
        (('"0.03"', "0.1234567"), "tiers.free.features.gpt4_tokens.credits.ai_credits", "more than 6 digits"),
        (('"0.03"', "-1"), "tiers.free.features.gpt4_tokens.credits.ai_credits", "more than 0"),
        (('"0.03"', "true"), "tiers.free.features.gpt4_tokens.credits.ai_credits", "decimal string"),
        (
            ('{ai_credits: "0.03"}', "{gems: 1}"),
            "tiers.free.features.gpt4_tokens.credits.gems",
            "not a credit type",
        ),
        (
            ("seats: {limit: 3}", "seats: {credits: {ai_credits: 1}}"),
            "tiers.free.features.seats.credits",
            "gauge",
        ),
        (("gpt4_tokens: {credits", "chat: {credits"), "tiers.free.features.chat.credits", "not a metric"),
        (("amount: 10000", "amount: 0.001"), "tiers.free.grants[0].amount", "more than 2 decimals"),
        (("every: month", "every: week"), "tiers.free.grants[0].every", "'month' or 'period'"),
        (("max: 5000", "max: 0.001"), "tiers.free.grants[0].rollover.max", "more than 2 decimals"),
        (("decimals: 2", "decimals: 7"), "credits.ai_credits.decimals", "less than or equal to 6"),
        (
            ('balance_low: ["100"', 'balance_low: ["0.001"'),
            "credits.ai_credits.balance_low[0]",
            "more than 2",
        ),
        (
            ("credits: ai_credits\n    amount: 5000", "credits: gems\n    amount: 5000"),
            "packs.ai_5000.amount",
            "not a credit",
        ),
        (("lookup_key: ai_5000", "lookup_key: ''"), "packs.ai_5000.price.lookup_key", "at least 1"),
    ],
)
def test_each_credit_problem_names_its_field(edit: tuple[str, str], field: str, fragment: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(CREDITS.replace(*edit))
    assert any(path == field and fragment in msg for path, msg in caught.value.problems), (
        caught.value.problems
    )


def test_a_pack_price_shares_the_lookup_keys_of_tiers_and_addons() -> None:
    text = CREDITS.replace(
        "    features: {gpt4",
        "    prices: {month: {lookup_key: ai_5000, unit_amount: 1, currency: usd}}\n    features: {gpt4",
    )
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    assert (
        "packs.ai_5000.price.lookup_key",
        "'ai_5000' is also used by tiers.free.prices.month.lookup_key",
    ) in (caught.value.problems)
