"""The ingress hook's pure parts: which request a proxy asks about, and the status it gets."""

from __future__ import annotations

import pytest

from sidecar.api.authz import authz_answer, original_request
from tiergate.models import Decision, PolicyAnswer


@pytest.mark.parametrize(
    ("headers", "method", "path", "expected"),
    [
        (
            {"X-Original-URI": "/api/v1/reports/7?x=1", "X-Original-Method": "post"},
            "GET",
            "/v1/authz",
            ("POST", "/api/v1/reports/7"),
        ),
        (
            {"X-Forwarded-Uri": "/sso/login", "X-Forwarded-Method": "GET"},
            "GET",
            "/v1/authz",
            ("GET", "/sso/login"),
        ),
        ({}, "DELETE", "/v1/authz/api/v1/audit/3", ("DELETE", "/api/v1/audit/3")),
        ({}, "GET", "/v1/authz", ("GET", "/")),
        ({"X-Original-URI": "/x"}, "GET", "/v1/authz", ("GET", "/x")),
    ],
)
def test_original_request(headers: dict[str, str], method: str, path: str, expected: tuple[str, str]) -> None:
    assert original_request(headers, method, path) == expected


def decision(
    allow: bool, reason: str = "ok", limit: int | None = None, remaining: int | None = None
) -> Decision:
    answer = PolicyAnswer(allow=allow, reason=reason, tier="pro", limit=limit, remaining=remaining)
    return Decision.of(
        answer,
        tenant="t",
        feature="f",
        quantity=1,
        decision_id="d1",
        policy_revision="r",
        data_as_of=None,
        stale=False,
    )


def test_allowed_request_reports_tier_and_tightest_remaining() -> None:
    status, headers = authz_answer([decision(True), decision(True, limit=100, remaining=7)], None)
    assert status == 200
    assert headers["X-Tiergate-Tier"] == "pro"
    assert headers["X-Tiergate-Remaining"] == "7"


def test_unlimited_remaining_is_spelled_out() -> None:
    assert authz_answer([decision(True)], None)[1]["X-Tiergate-Remaining"] == "unlimited"


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("not_in_plan", 403),
        ("subscription_inactive", 403),
        ("payment_overdue", 403),
        ("limit_exceeded", 429),
    ],
)
def test_denials_map_to_status(reason: str, status: int) -> None:
    got, headers = authz_answer([decision(True), decision(False, reason)], 3600)
    assert got == status
    assert ("Retry-After" in headers) == (status == 429)
