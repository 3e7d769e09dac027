"""POST /v1/check's reserve body, validated by hand, gives pydantic's verdicts on `ReserveRequest`:
the same values, or a 400 naming the same first field."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from tiergate.errors import BadRequestError
from tiergate.sidecar.api.reserve_body import reserve_body
from tiergate.sidecar.api.usage import ReserveRequest

BASE: dict[str, Any] = {"tenant": "acme", "feature": "api_calls", "reserve": True}
CASES: list[dict[str, Any]] = [
    BASE,
    {**BASE, "reserve": False},
    {**BASE, "quantity": 3, "transaction_id": "job-1"},
    {**BASE, "tenant": "  acme\t", "feature": "\u3000api_calls\u2028"},
    {**BASE, "tenant": "acme\x1c"},  # not whitespace to pydantic: kept
    {**BASE, "tenant": "\x1c"},
    {**BASE, "tenant": ""},
    {**BASE, "tenant": "   "},
    {**BASE, "tenant": "t" * 200},
    {**BASE, "tenant": "t" * 201},
    {**BASE, "tenant": " " + "t" * 200 + " "},
    {**BASE, "tenant": 42},
    {**BASE, "tenant": None},
    {**BASE, "feature": "f" * 101},
    {**BASE, "feature": ["api_calls"]},
    {k: v for k, v in BASE.items() if k != "tenant"},
    {k: v for k, v in BASE.items() if k != "feature"},
    {k: v for k, v in BASE.items() if k != "reserve"},
    {**BASE, "quantity": 0},
    {**BASE, "quantity": -1},
    {**BASE, "quantity": 1_000_000_000},
    {**BASE, "quantity": 1_000_000_001},
    {**BASE, "quantity": 2**70},
    {**BASE, "quantity": 2.0},
    {**BASE, "quantity": True},
    {**BASE, "quantity": "3"},
    {**BASE, "quantity": None},
    {**BASE, "reserve": "yes"},
    {**BASE, "reserve": 1},
    {**BASE, "reserve": None},
    {**BASE, "transaction_id": None},
    {**BASE, "transaction_id": ""},
    {**BASE, "transaction_id": "  "},
    {**BASE, "transaction_id": "x" * 200},
    {**BASE, "transaction_id": "x" * 201},
    {**BASE, "transaction_id": 7},
    {**BASE, "bogus": 1},
    {"bogus": 1, **BASE, "tenant": ""},  # a field's error comes before an unknown key's
    {**BASE, "quantity": 0, "reserve": "no", "extra": []},
]


def pydantic_verdict(body: dict[str, Any]) -> tuple[Any, ...] | str:
    try:
        check = ReserveRequest.model_validate(body)
    except ValidationError as exc:
        return ".".join(str(part) for part in exc.errors()[0]["loc"])
    return check.tenant, check.feature, check.quantity, check.reserve, check.transaction_id


def plain_verdict(body: dict[str, Any]) -> tuple[Any, ...] | str:
    try:
        return tuple(reserve_body(body))
    except BadRequestError as exc:
        assert exc.field is not None and exc.message.startswith(exc.field + ": ")
        return exc.field


@pytest.mark.parametrize("body", CASES)
def test_same_verdict_as_the_model(body: dict[str, Any]) -> None:
    assert plain_verdict(body) == pydantic_verdict(body)


def test_same_verdicts_on_random_bodies() -> None:
    rng = random.Random(15)
    values: list[Any] = [
        "a",
        " a ",
        "",
        " ",
        "\x1f",
        "\u2003b",
        "x" * 201,
        0,
        1,
        5,
        -2,
        10**9 + 1,
        1.5,
        True,
        False,
        None,
        [],
        {},
        "job-7",
    ]
    keys = ["tenant", "feature", "quantity", "reserve", "transaction_id", "other"]
    for _ in range(3000):
        body = {key: rng.choice(values) for key in rng.sample(keys, rng.randint(0, len(keys)))}
        assert plain_verdict(body) == pydantic_verdict(body), body
