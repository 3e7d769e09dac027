"""GET /v1/check's hand-written validation gives pydantic's verdicts on `CheckRequest`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tiergate.errors import BadRequestError
from tiergate.models import CheckRequest
from tiergate.sidecar.api.query import check_query

CASES = [
    {"tenant": "acme", "feature": "sso"},
    {"tenant": "  acme ", "feature": " sso", "quantity": "3"},
    {"tenant": "acme", "feature": "sso", "quantity": "1000000000"},
    {"tenant": "acme", "feature": "sso", "quantity": "1000000001"},
    {"tenant": "acme", "feature": "sso", "quantity": "0"},
    {"tenant": "acme", "feature": "sso", "quantity": "-3"},
    {"tenant": "acme", "feature": "sso", "quantity": "abc"},
    {"tenant": "acme", "feature": "sso", "quantity": "1.5"},
    {"tenant": "acme", "feature": "sso", "quantity": ""},
    {"feature": "sso"},
    {"tenant": "acme"},
    {"tenant": "", "feature": "sso"},
    {"tenant": "   ", "feature": "sso"},
    {"tenant": "t" * 200, "feature": "f" * 100},
    {"tenant": "t" * 201, "feature": "sso"},
    {"tenant": "acme", "feature": "f" * 101},
    {"tenant": "acme", "feature": "sso", "unrelated": "ignored"},
]


def pydantic_verdict(query: dict[str, str]) -> tuple[str, str, int] | str:
    raw: dict[str, object] = {k: query[k] for k in ("tenant", "feature") if k in query}
    if "quantity" in query:
        try:
            raw["quantity"] = int(query["quantity"])
        except ValueError:
            return "quantity"
    try:
        check = CheckRequest.model_validate(raw)
    except ValidationError as exc:
        return str(exc.errors()[0]["loc"][0])
    return check.tenant, check.feature, check.quantity


def plain_verdict(query: dict[str, str]) -> tuple[str, str, int] | str:
    try:
        return check_query(query)
    except BadRequestError as exc:
        assert exc.field is not None and exc.field in exc.message
        return exc.field


@pytest.mark.parametrize("query", CASES)
def test_same_verdict_as_the_model(query: dict[str, str]) -> None:
    assert plain_verdict(query) == pydantic_verdict(query)
