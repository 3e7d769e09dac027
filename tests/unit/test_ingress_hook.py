"""The ingress hook's pure parts: which request a proxy asks about, and the verdict it gets."""

from __future__ import annotations

import json

import pytest

from tiergate.errors import BadRequestError
from tiergate.models import Decision
from tiergate.sidecar.ingress.hook import (
    Verdict,
    decisions_verdict,
    for_auth_request,
    header_json,
    original_request,
)


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
        ({}, "GET", "/v1/authz/", ("GET", "/")),
    ],
)
def test_original_request(headers: dict[str, str], method: str, path: str, expected: tuple[str, str]) -> None:
    assert original_request(headers, method, path) == expected


@pytest.mark.parametrize(
    ("headers", "path", "field"),
    [
        ({}, "/v1/authz", "X-Original-URI"),  # no convention at all: never "/" and allowed
        ({"X-Original-URI": "/x"}, "/v1/authz", "X-Original-Method"),
        ({"X-Forwarded-Uri": "/x", "X-Original-Method": "GET"}, "/v1/authz", "X-Forwarded-Method"),
        ({"X-Original-URI": "", "X-Original-Method": "GET"}, "/v1/authz", "X-Original-URI"),
        ({"X-Original-URI": "/" * 9000, "X-Original-Method": "GET"}, "/v1/authz", "X-Original-URI"),
        ({"X-Original-URI": "/x", "X-Original-Method": "G\nET"}, "/v1/authz", "X-Original-Method"),
    ],
)
def test_a_malformed_hook_call_is_refused(headers: dict[str, str], path: str, field: str) -> None:
    with pytest.raises(BadRequestError) as raised:
        original_request(headers, "GET", path)
    assert raised.value.field == field


def decision(
    allow: bool, reason: str = "ok", limit: int | None = None, remaining: int | None = None
) -> Decision:
    return Decision(
        allow=allow,
        reason=reason,
        tier="pro",
        tenant="t",
        feature="api_calls",
        limit=limit,
        remaining=remaining,
        decision_id="d1",
    )


def test_allowed_request_reports_tier_and_tightest_remaining() -> None:
    verdict = decisions_verdict([decision(True), decision(True, limit=100, remaining=7)], None, "GET", "/")
    assert verdict.status == 200
    assert verdict.headers["X-Tiergate-Tier"] == "pro"
    assert verdict.headers["X-Tiergate-Remaining"] == "7"


def test_unlimited_remaining_is_spelled_out() -> None:
    assert (
        decisions_verdict([decision(True)], None, "GET", "/").headers["X-Tiergate-Remaining"] == "unlimited"
    )


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
    verdict = decisions_verdict([decision(True), decision(False, reason)], 3600, "GET", "/a")
    assert (verdict.status, verdict.reason) == (status, reason)
    assert ("Retry-After" in verdict.headers) == (status == 429)
    assert verdict.body is not None and verdict.body["reason"] == reason


def test_for_auth_request_a_denial_travels_in_headers_of_a_403() -> None:
    verdict = decisions_verdict([decision(False, "limit_exceeded", 10, 0)], 60, "GET", "/é" + "x" * 500)
    mapped = for_auth_request(verdict)
    assert mapped.status == 403
    assert (mapped.headers["X-Tiergate-Status"], mapped.headers["Retry-After"]) == ("429", "60")
    carried = mapped.headers["X-Tiergate-Error"]
    assert carried.isascii() and "decision" not in json.loads(carried)
    assert json.loads(carried)["path"] == ("/é" + "x" * 500)[:200]


def test_for_auth_request_an_allow_is_unchanged() -> None:
    verdict = Verdict(200, "ok", {"X-Tiergate-Tier": "pro"})
    assert for_auth_request(verdict) is verdict


def test_header_json_escapes_control_characters() -> None:
    assert "\n" not in header_json({"message": "a\nb", "path": "/\u2028"})
