"""What a client and the upstream see through NGINX running the shipped deploy/nginx configuration."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.ingress.conftest import EDGE_USED, Stack


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, got, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, got, raw = exc.code, dict(exc.headers), exc.read()
        exc.close()
    content_type = got.get("Content-Type", "")
    return Answer(status, got, json.loads(raw) if raw and "json" in content_type else raw)


def as_tenant(tenant: str, **extra: str) -> dict[str, str]:
    return {"X-Api-Key": f"key-{tenant}", **extra}


def test_an_allowed_request_reaches_the_upstream_with_the_sidecars_headers(stack: Stack) -> None:
    answer = call(stack.url("/api/v1/reports/7"), as_tenant("pro-active"))
    assert answer.status == 200 and answer.body["upstream"] is True
    seen = stack.app.last().headers
    assert (seen["x-tenant-id"], seen["x-tiergate-tenant"], seen["x-tiergate-tier"]) == (
        "pro-active",
    ) * 2 + ("pro",)
    assert seen["x-tiergate-decision-id"]
    assert not {"x-tiergate-request-id", "x-tiergate-proxy", "x-tiergate-status", "x-tiergate-error"} & set(
        seen
    )


def test_no_credentials_is_401_with_a_json_error(stack: Stack) -> None:
    answer = call(stack.url("/api/v1/things"))
    assert answer.status == 401
    assert answer.body["error"]["code"] == "unauthenticated"
    assert answer.body["error"]["field"] == "X-Tenant-Id"


@pytest.mark.parametrize(
    ("tenant", "method", "path", "reason"),
    [
        ("starter-active", "GET", "/api/v1/audit/events", "not_in_plan"),
        ("pro-unpaid", "POST", "/api/v1/reports/1", "subscription_inactive"),
        ("pro-overdue", "POST", "/api/v1/reports/1", "payment_overdue"),
    ],
)
def test_a_refused_feature_is_403_with_the_reason(
    stack: Stack, tenant: str, method: str, path: str, reason: str
) -> None:
    before = len(stack.app.seen)
    answer = call(stack.url(path), as_tenant(tenant), method)
    assert answer.status == 403
    assert answer.headers["Content-Type"] == "application/json"
    assert (answer.body["allow"], answer.body["reason"], answer.body["path"]) == (False, reason, path)
    assert len(stack.app.seen) == before  # the upstream never saw it


def test_over_quota_is_429_with_retry_after_and_a_json_reason(stack: Stack) -> None:
    answer = call(stack.url("/api/v1/things"), as_tenant("free-heavy"))
    assert answer.status == 429
    assert int(answer.headers["Retry-After"]) > 0
    assert (answer.body["reason"], answer.body["feature"], answer.body["limit"]) == (
        "limit_exceeded",
        "api_calls",
        1000,
    )


def test_a_forged_tenant_header_has_no_effect(stack: Stack) -> None:
    # starter has no audit log; claiming to be an enterprise tenant changes nothing.
    forged = as_tenant("starter-active", **{"X-Tenant-Id": "ent-active"})
    assert call(stack.url("/api/v1/audit/events"), forged).body["reason"] == "not_in_plan"
    # Without an API key the forged header alone is no tenant at all.
    assert call(stack.url("/api/v1/things"), {"X-Tenant-Id": "ent-active"}).status == 401


def test_forged_tiergate_headers_never_reach_the_upstream(stack: Stack) -> None:
    forged = {
        "X-Tiergate-Tier": "enterprise",
        "X-Tiergate-Remaining": "unlimited",
        "X-Tiergate-Tenant": "ent-active",
        "X-Tiergate-Status": "200",
    }
    answer = call(stack.url("/api/v1/things"), as_tenant("free-light", **forged))
    assert answer.status == 200
    seen = stack.app.last().headers
    assert (seen["x-tiergate-tier"], seen["x-tiergate-tenant"], seen["x-tenant-id"]) == (
        "free",
        "free-light",
        "free-light",
    )
    assert int(seen["x-tiergate-remaining"]) < 1000
    assert "x-tiergate-status" not in seen


def test_a_tiergate_header_the_config_cannot_overwrite_is_refused(stack: Stack) -> None:
    before = len(stack.app.seen)
    answer = call(stack.url("/api/v1/reports/9"), as_tenant("pro-active", **{"X-Tiergate-Admin": "yes"}))
    assert answer.status == 400
    assert answer.body["error"]["code"] == "reserved_header"
    assert "X-Tiergate-Admin" in answer.body["error"]["message"]
    assert len(stack.app.seen) == before


def test_a_replayed_request_id_never_passes_a_used_up_quota(stack: Stack) -> None:
    # The client sends the same id every time; NGINX overwrites it with its own $request_id.
    headers = as_tenant("free-edge", **{"X-Tiergate-Request-Id": "same-every-time", "X-Request-Id": "same"})
    statuses = [call(stack.url("/api/v1/things"), headers).status for _ in range(1000 - EDGE_USED + 3)]
    assert statuses == [200] * (1000 - EDGE_USED) + [429] * 3
    check = call(f"http://127.0.0.1:{stack.sidecar_port}/v1/check?tenant=free-edge&feature=api_calls")
    assert check.body["used"] == 1000


def test_the_authz_listener_serves_the_hook_and_health_only(stack: Stack) -> None:
    listener = f"http://127.0.0.1:{stack.authz_port}"
    assert call(f"{listener}/healthz").status == 200
    refused = [
        call(f"{listener}{path}").status
        for path in ("/v1/check?tenant=a&feature=b", "/v1/status", "/metrics")
    ]
    assert refused == [404, 404, 404]
    assert call(f"{listener}/v1/usage", method="POST").status == 404
    assert call(f"http://127.0.0.1:{stack.sidecar_port}/v1/status").status == 200  # loopback: all of it


def test_a_hook_call_without_the_original_request_is_400_never_an_allow(stack: Stack) -> None:
    answer = call(f"http://127.0.0.1:{stack.authz_port}/v1/authz", {"X-Tenant-Id": "ent-active"})
    assert answer.status == 400
    assert answer.body["error"]["field"] == "X-Original-URI"
    assert "X-Forwarded-Uri" in answer.body["error"]["message"]


def test_answers_are_counted_by_status_and_reason(stack: Stack) -> None:
    call(stack.url("/api/v1/things"), as_tenant("free-heavy"))
    metrics = call(f"http://127.0.0.1:{stack.sidecar_port}/metrics").body.decode()
    assert 'tiergate_authz_total{reason="limit_exceeded",status="429"}' in metrics
