"""The one rule for tenant ids (tiergate.models), which the daemon and the sidecars both apply."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tiergate.models import MAX_TENANT_LENGTH, CheckRequest, tenant_problem


@pytest.mark.parametrize(
    ("tenant", "problem"),
    [
        ("acme", None),
        ("café-東京", None),
        ("t" * MAX_TENANT_LENGTH, None),
        ("", "must not be empty"),
        ("t" * (MAX_TENANT_LENGTH + 1), "longer than"),
        ("tab\there", "U+0009"),
        ("nul\x00", "U+0000"),
        ("del\x7f", "U+007F"),
        ("c1\x85", "U+0085"),
    ],
)
def test_tenant_problem(tenant: str, problem: str | None) -> None:
    found = tenant_problem(tenant)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_the_model_applies_the_same_rule() -> None:
    with pytest.raises(ValidationError, match="U\\+0009"):
        CheckRequest.model_validate({"tenant": "a\tb", "feature": "sso"})
    assert CheckRequest.model_validate({"tenant": " acme ", "feature": "sso"}).tenant == "acme"
