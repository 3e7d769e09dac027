"""Exact usage amounts (pure): a whole number is an `int`, a fraction a `Decimal`; never a float.

A `sum` metric's event may carry a decimal value (`"gb": "2.5"`) or a negative one (a
correction). Every place that holds a value or a counter (the sidecar's outbox and pending
totals, the daemon's events and counters on either backend, the feed, the replica) keeps it
exactly, in one of these forms:

* in memory: `Amount` (`int` when whole, else a `Decimal` without trailing zeros);
* in SQLite: an INTEGER when whole, else the decimal TEXT (columns declared without a type, so
  SQLite converts neither); in PostgreSQL: `numeric`;
* in JSON (the feed, the daemon's answers): an integer when whole, else the decimal as a string
  (JSON numbers with a fraction become binary floats in most parsers).

Decisions compare whole-unit counters: `policy_units` rounds a counter up to a whole number,
which is exact against whole limits and whole quantities (see docs/adr/0016-exact-usage-amounts.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

Amount = int | Decimal

MAX_SCALE = 6  # digits after the decimal point of one event's value
MAX_DIGITS = 15  # significant digits of one event's value (Stripe's meter events take 15)
# Wide enough for any sum of bounded values; Inexact traps: a sum is exact or it is an error.
_EXACT = Context(prec=80, traps=[Inexact, InvalidOperation, Overflow])


class AmountError(ValueError):
    """A value that is not an exact amount, or exceeds the bounds; the message says which."""


def exact(value: int | Decimal) -> Amount:
    """The canonical form: `int` when whole, else a normalized `Decimal`."""
    if isinstance(value, int):
        return value
    if value == value.to_integral_value():
        return int(value)
    return value.normalize(_EXACT)


def add(left: Amount, right: Amount) -> Amount:
    if isinstance(left, int) and isinstance(right, int):
        return left + right
    return exact(_EXACT.add(Decimal(left), Decimal(right)))


def total(values: Iterable[Amount]) -> Amount:
    result: Amount = 0
    for value in values:
        result = add(result, value)
    return result


def negate(value: Amount) -> Amount:
    return -value if isinstance(value, int) else exact(_EXACT.minus(value))


def event_amount(value: object, bound: int) -> Amount:
    """One event's value, read exactly: an int, a decimal string, or a float through its shortest
    repr (what the JSON text said). At most MAX_SCALE decimals, MAX_DIGITS significant digits and
    `bound` in magnitude; raises AmountError naming the rule."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise AmountError(f"must be a number or a decimal string, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise AmountError(f"must be a finite number, got {value!r}")
    try:
        number = _decimal_of(value)
    except InvalidOperation:
        raise AmountError(f"must be a number, got {value!r}") from None
    if not number.is_finite():
        raise AmountError(f"must be a finite number, got {value!r}")
    if not -bound <= number <= bound:
        raise AmountError(f"must be between -{bound} and {bound}, got {value!r}")
    amount = exact(number)
    if isinstance(amount, Decimal):
        _check_precision(amount, value)
    return amount


def _decimal_of(value: int | float | Decimal | str) -> Decimal:
    if isinstance(value, Decimal):
        return value  # a JSON number, exactly its text (tiergate/exact_json.py)
    return Decimal(repr(value) if isinstance(value, float) else str(value).strip())


def _check_precision(amount: Decimal, sent: object) -> None:
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    if -exponent > MAX_SCALE:
        raise AmountError(f"has more than {MAX_SCALE} digits after the decimal point, got {sent!r}")
    if len(digits) > MAX_DIGITS:
        raise AmountError(f"has more than {MAX_DIGITS} significant digits, got {sent!r}")


def stored(value: Amount) -> int | str:
    """What a database column or a JSON document holds: the int, or the decimal text."""
    return value if isinstance(value, int) else format(value, "f")


def from_stored(value: object) -> Amount:
    """Back from a column or a JSON document: int, decimal text, `Decimal` (PostgreSQL numeric)."""
    if isinstance(value, bool):
        raise AmountError(f"not an amount: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        return exact(value)
    if isinstance(value, str | float):
        try:
            number = Decimal(repr(value) if isinstance(value, float) else value)
        except InvalidOperation:
            raise AmountError(f"not an amount: {value!r}") from None
        if number.is_finite():
            return exact(number)
    raise AmountError(f"not an amount: {value!r}")


def policy_units(value: Amount) -> int:
    """A counter as decisions see it: at least zero, rounded up to a whole unit.

    Limits and quantities are whole numbers, so `used + quantity <= limit` holds for the exact
    counter exactly when it holds for its ceiling: nothing is lost, and the policy engine (whose
    numbers are binary doubles) only ever adds whole numbers.
    """
    if isinstance(value, int):
        return value if value > 0 else 0
    return max(0, math.ceil(value))


# A counter in a pydantic model (the feed, imports): an int or a decimal string, exact; below zero
# when a correction ran ahead of what it corrects.
Counter = Annotated[Amount, BeforeValidator(from_stored), PlainSerializer(stored)]
