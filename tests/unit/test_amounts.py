"""Exact amounts and exact JSON (pure): decimals never pass through a binary float."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, Field

from tiergate import exact_json
from tiergate.amounts import (
    AmountError,
    add,
    event_amount,
    from_stored,
    negate,
    policy_units,
    stored,
    total,
)
from tiergate.feed import FeedUsage, usage_record
from tiergate.models import UsageCounter


def test_a_thousand_tenths_sum_to_exactly_one_hundred() -> None:
    tenth = event_amount("0.1", 10**9)
    assert total([tenth] * 1000) == 100 and type(total([tenth] * 1000)) is int
    assert sum([0.1] * 1000) != 100  # what a float counter would have said


def test_a_correction_brings_a_counter_back_exactly() -> None:
    counter = add(add(0, Decimal("2.5")), Decimal("0.25"))
    assert add(counter, negate(Decimal("2.75"))) == 0
    assert add(counter, Decimal("-3")) == Decimal("-0.25")


@pytest.mark.parametrize(
    ("value", "units"),
    [(0, 0), (7, 7), (-3, 0), (Decimal("2.000001"), 3), (Decimal("-0.5"), 0), (Decimal("9.9"), 10)],
)
def test_decisions_see_whole_units_rounded_up_and_never_below_zero(value: int | Decimal, units: int) -> None:
    assert policy_units(value) == units and type(policy_units(value)) is int


@pytest.mark.parametrize(
    "limit_used_quantity",
    [(3, Decimal("2.5"), 1), (3, Decimal("2"), 1), (10, Decimal("9.000001"), 1), (1, Decimal("0.3"), 1)],
)
def test_whole_units_decide_exactly_as_the_exact_sum(limit_used_quantity: tuple[int, Decimal, int]) -> None:
    limit, used, quantity = limit_used_quantity
    assert (policy_units(used) + quantity <= limit) == (used + quantity <= limit)


@pytest.mark.parametrize("value", [7, Decimal("12.5"), Decimal("-0.000001"), Decimal("999999999.999999")])
def test_stored_forms_round_trip(value: int | Decimal) -> None:
    assert from_stored(stored(value)) == value
    assert from_stored(Decimal(stored(value))) == value  # PostgreSQL numeric comes back as Decimal
    assert stored(value) == value if isinstance(value, int) else isinstance(stored(value), str)


def test_stored_text_has_no_exponent() -> None:
    assert stored(event_amount("1e-6", 10**9)) == "0.000001"
    assert stored(event_amount("2.50", 10**9)) == "2.5"


@pytest.mark.parametrize("bad", ["", "x", "NaN", True, None, [1], Decimal("Infinity")])
def test_what_is_not_an_amount_is_refused(bad: object) -> None:
    with pytest.raises(AmountError):
        event_amount(bad, 10**9)


def test_counters_in_models_take_decimal_strings() -> None:
    row = {"tenant": "t", "code": "gb", "period_start": "2026-01-01T00:00:00Z"}
    assert UsageCounter.model_validate({**row, "value": "2.5"}).value == Decimal("2.5")
    assert UsageCounter.model_validate({**row, "value": 4}).model_dump(mode="json")["value"] == 4
    assert UsageCounter.model_validate({**row, "value": "0.1"}).model_dump(mode="json")["value"] == "0.1"
    with pytest.raises(ValueError, match="not an amount"):
        UsageCounter.model_validate({**row, "value": "lots"})


@pytest.mark.parametrize(
    ("exact", "record"),
    [
        (7, {"value": 7}),
        (Decimal("2.25"), {"value": 3, "exact": "2.25"}),
        (Decimal("-0.5"), {"value": 0, "exact": "-0.5"}),
        (-4, {"value": 0, "exact": -4}),
    ],
)
def test_the_feed_carries_whole_units_for_old_sidecars_and_the_exact_sum(
    exact: int | Decimal, record: dict[str, object]
) -> None:
    sent = usage_record("t", "gb", "2026-01-01T00:00:00Z", exact)
    assert {k: v for k, v in sent.items() if k in ("value", "exact")} == record
    assert FeedUsage.model_validate(sent).amount() == exact
    assert OldFeedUsage.model_validate(sent).value == record["value"]  # a sidecar before this change


class OldFeedUsage(BaseModel):
    """The feed's usage record as sidecars before exact amounts read it."""

    model_config = ConfigDict(extra="ignore")
    value: Annotated[int, Field(ge=0)]


def test_exact_json_keeps_every_digit_of_a_number() -> None:
    text = b'{"gb":0.10000000000000000001,"n":[1,2.50,1e5],"s":"x"}'
    value = exact_json.loads(text)
    assert value["gb"] == Decimal("0.10000000000000000001")
    assert exact_json.dumps(value) == b'{"gb":0.10000000000000000001,"n":[1,2.50,1E+5],"s":"x"}'


@pytest.mark.parametrize("bad", [b'{"a": NaN}', b"[" * 2000, b'"\\ud800"', b"{", b"\xff"])
def test_exact_json_refuses_what_the_strict_parser_refuses(bad: bytes) -> None:
    with pytest.raises(exact_json.ExactJsonError):
        exact_json.loads(bad)


def test_exact_json_reads_what_is_too_deep_for_python_through_the_strict_parser() -> None:
    deep = b'{"a":' * 990 + b"1.5" + b"}" * 990
    value = exact_json.loads(deep)
    for _ in range(990):
        value = value["a"]
    assert value == 1.5
