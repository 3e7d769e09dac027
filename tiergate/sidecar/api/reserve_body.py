"""POST /v1/check's body with `"reserve"`, validated by hand: the same rules and the same first
error as the `ReserveRequest` model (tests/unit/test_reserve_body.py holds the two to the same
verdicts), without pydantic's per-request cost on the reserve path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from tiergate.errors import BadRequestError
from tiergate.models import MAX_FEATURE_LENGTH, MAX_QUANTITY, MAX_TENANT_LENGTH, tenant_problem

MAX_TRANSACTION_ID_LENGTH = 200
FIELDS = ("tenant", "feature", "quantity", "reserve", "transaction_id")
# What pydantic's strip_whitespace removes (Rust's char::is_whitespace, Unicode White_Space):
# str.strip() alone would also remove the separators \x1c-\x1f, which pydantic keeps.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)


class ReserveBody(NamedTuple):
    tenant: str
    feature: str
    quantity: int
    reserve: bool
    transaction_id: str | None


_KNOWN = frozenset(FIELDS)


def reserve_body(body: Mapping[str, object]) -> ReserveBody:
    """The body's fields; a BadRequestError names the first bad one (the model's order, then
    unknown keys). The usual, valid body takes one pass of type and length checks."""
    tenant, feature = body.get("tenant"), body.get("feature")
    quantity, reserve = body.get("quantity", 1), body.get("reserve")
    transaction_id = body.get("transaction_id")
    if (
        type(tenant) is str
        and type(feature) is str
        and type(quantity) is int
        and type(reserve) is bool
        and (transaction_id is None or type(transaction_id) is str)
        and body.keys() <= _KNOWN
    ):
        tenant, feature = tenant.strip(WHITESPACE), feature.strip(WHITESPACE)
        if (
            0 < len(tenant) <= MAX_TENANT_LENGTH
            and 0 < len(feature) <= MAX_FEATURE_LENGTH
            and 1 <= quantity <= MAX_QUANTITY
            and (transaction_id is None or 0 < len(transaction_id) <= MAX_TRANSACTION_ID_LENGTH)
            and (tenant.isprintable() or tenant_problem(tenant) is None)
        ):
            return ReserveBody(tenant, feature, quantity, reserve, transaction_id)
    return _first_error(body)


def _first_error(body: Mapping[str, object]) -> ReserveBody:
    """Field by field, in the model's order: raises for the first bad one."""
    tenant = _text(body, "tenant", MAX_TENANT_LENGTH, strip=True)
    problem = tenant_problem(tenant)
    if problem is not None:
        raise _bad("tenant", f"Value error, {problem}")
    feature = _text(body, "feature", MAX_FEATURE_LENGTH, strip=True)
    quantity = _quantity(body.get("quantity", 1))
    reserve = body.get("reserve")
    if "reserve" not in body:
        raise _bad("reserve", "Field required")
    if not isinstance(reserve, bool):
        raise _bad("reserve", "Input should be a valid boolean")
    transaction_id = body.get("transaction_id")
    if transaction_id is not None:
        transaction_id = _text(body, "transaction_id", MAX_TRANSACTION_ID_LENGTH, strip=False)
    for key in body:
        if key not in FIELDS:
            raise _bad(key, "Extra inputs are not permitted")
    return ReserveBody(tenant, feature, quantity, reserve, transaction_id)


def _text(body: Mapping[str, object], name: str, max_length: int, *, strip: bool) -> str:
    if name not in body:
        raise _bad(name, "Field required")
    value = body[name]
    if not isinstance(value, str):
        raise _bad(name, "Input should be a valid string")
    if strip:
        value = value.strip(WHITESPACE)
    if not value:
        raise _bad(name, "String should have at least 1 character")
    if len(value) > max_length:
        raise _bad(name, f"String should have at most {max_length} characters")
    return value


def _quantity(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad("quantity", "Input should be a valid integer")
    if value < 1:
        raise _bad("quantity", "Input should be greater than or equal to 1")
    if value > MAX_QUANTITY:
        raise _bad("quantity", f"Input should be less than or equal to {MAX_QUANTITY}")
    return value


def _bad(field: str, message: str) -> BadRequestError:
    return BadRequestError(f"{field}: {message}", field=field)
