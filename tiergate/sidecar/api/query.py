"""GET /v1/check's query, validated by hand: the same rules as `CheckRequest`, without pydantic's
per-request cost on the hot path (tests/unit/test_check_query.py holds the two to the same verdicts)."""

from __future__ import annotations

from collections.abc import Mapping

from tiergate.errors import BadRequestError
from tiergate.models import MAX_FEATURE_LENGTH, MAX_QUANTITY, MAX_TENANT_LENGTH, tenant_problem


def check_query(query: Mapping[str, str]) -> tuple[str, str, int]:
    """(tenant, feature, quantity) of a GET /v1/check; a BadRequestError names the bad field."""
    tenant = _text(query, "tenant", MAX_TENANT_LENGTH)
    problem = tenant_problem(tenant)
    if problem is not None:
        raise BadRequestError(f"tenant: {problem}", field="tenant")
    feature = _text(query, "feature", MAX_FEATURE_LENGTH)
    raw = query.get("quantity")
    if raw is None:
        return tenant, feature, 1
    try:
        quantity = int(raw)
    except ValueError:
        raise BadRequestError(f"quantity: {raw!r} is not an integer", field="quantity") from None
    if not 1 <= quantity <= MAX_QUANTITY:
        raise BadRequestError(f"quantity: {quantity} is outside 1..{MAX_QUANTITY}", field="quantity")
    return tenant, feature, quantity


def _text(query: Mapping[str, str], name: str, max_length: int) -> str:
    value = query.get(name)
    if value is None:
        raise BadRequestError(f"{name}: required", field=name)
    value = value.strip()
    if not value:
        raise BadRequestError(f"{name}: must not be empty", field=name)
    if len(value) > max_length:
        raise BadRequestError(f"{name}: longer than {max_length} characters", field=name)
    return value
