"""The burn order (tiergate/credits.py allocate) against the reference model, property-based."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.credits_model import NOW, amounts, model_grants, one_grant, spend
from tiergate.amounts import exact
from tiergate.credits import LiveGrant, affordable, allocate, balance, cost_of, credit_amount, crossed_below


@settings(max_examples=1000)
@given(st.lists(one_grant, max_size=8), amounts)
def test_allocate_spends_exactly_as_the_reference_model(
    drawn: list[tuple[Decimal, str, int, int, int | None]], amount: Decimal
) -> None:
    grants = model_grants(drawn)
    live = [
        LiveGrant(g.name, exact(g.remaining), g.category, g.priority, g.effective_at, g.expires_at, g.created)  # type: ignore[arg-type]
        for g in grants
    ]
    expected, short = spend(grants, amount, NOW)
    allocation = allocate(live, exact(amount), NOW)
    assert {k: Decimal(v) for k, v in allocation.taken} == expected
    assert Decimal(allocation.shortfall) == short
    assert Decimal(balance(live, NOW)) == sum(
        (
            g.remaining
            for g in grants
            if g.effective_at <= NOW and (g.expires_at is None or g.expires_at > NOW)
        ),
        Decimal(0),
    )


def test_a_cost_is_rounded_up_to_the_types_decimals_never_down() -> None:
    assert cost_of(Decimal("0.03"), Decimal("2.5"), 2) == Decimal("0.08")  # 0.075 -> 0.08
    assert cost_of(Decimal("0.03"), 3, 2) == Decimal("0.09")
    assert cost_of(2, 3, 0) == 6
    assert cost_of(Decimal("0.000001"), 1, 0) == 1


def test_the_check_and_the_crossing() -> None:
    assert affordable(10, 4, 3, 3) and not affordable(10, 4, 3, Decimal("3.01"))
    assert crossed_below(100, 99, 100) and not crossed_below(99, 98, 100) and not crossed_below(101, 100, 100)
    assert credit_amount("0.30") == Decimal("0.3")
