"""The ingress hook as NGINX, Traefik and Envoy call it, routed by policies/ingress.rego."""

from __future__ import annotations

import json

import pytest

from tests.integration.sidecar.conftest import SidecarClient


def nginx(uri: str, method: str = "GET", tenant: str | None = "pro-active") -> dict[str, str]:
    headers = {"X-Original-URI": uri, "X-Original-Method": method}
    return headers | ({"X-Tenant-Id": tenant} if tenant is not None else {})


async def test_allowed_route_reports_tier_and_what_remains_after_it(client: SidecarClient) -> None:
    """api_calls: 99,999 of 100,000 used; this request uses the last unit, so 0 remain."""
    response = await client.get("/v1/authz", headers=nginx("/api/v1/reports/42", "POST"))
    assert response.status == 200
    assert response.headers["X-Tiergate-Tier"] == "pro"
    assert response.headers["X-Tiergate-Remaining"] == "0"
    after = await client.get("/v1/authz", headers=nginx("/api/v1/reports/43", "POST"))
    assert after.status == 429


async def test_feature_not_in_plan_is_403_with_a_reason(client: SidecarClient) -> None:
    response = await client.get("/v1/authz", headers=nginx("/api/v1/audit/events", tenant="starter-active"))
    assert response.status == 403
    body = await response.json()
    assert (body["reason"], body["path"]) == ("not_in_plan", "/api/v1/audit/events")


async def test_exhausted_quota_is_429_with_retry_after(client: SidecarClient) -> None:
    response = await client.get("/v1/authz", headers=nginx("/api/v1/things", tenant="free-heavy"))
    assert response.status == 429
    assert int(response.headers["Retry-After"]) > 0
    assert (await response.json())["reason"] == "limit_exceeded"


async def test_inactive_subscription_is_403(client: SidecarClient) -> None:
    response = await client.get("/v1/authz", headers=nginx("/sso/login", tenant="pro-unpaid"))
    assert response.status == 403
    assert (await response.json())["reason"] == "subscription_inactive"


async def test_missing_tenant_is_401(client: SidecarClient) -> None:
    response = await client.get("/v1/authz", headers=nginx("/api/v1/reports/1", tenant=None))
    assert response.status == 401
    assert (await response.json())["error"]["field"] == "X-Tenant-Id"


async def test_traefik_forward_auth_headers(client: SidecarClient) -> None:
    headers = {
        "X-Forwarded-Uri": "/sso/callback?code=1",
        "X-Forwarded-Method": "GET",
        "X-Tenant-Id": "nobody",
    }
    response = await client.get("/v1/authz", headers=headers)
    assert response.status == 403
    assert (await response.json())["reason"] == "not_in_plan"


@pytest.mark.parametrize(("method", "status"), [("POST", 200), ("DELETE", 403)])
async def test_envoy_ext_authz_path_prefix(client: SidecarClient, method: str, status: int) -> None:
    # Envoy appends the original path to the prefix and keeps the method.
    response = await client.request(
        method,
        "/v1/authz/api/v1/audit/x",
        headers={"X-Tenant-Id": "ent-active" if status == 200 else "pro-active"},
    )
    assert response.status == status


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({}, "X-Original-URI"),
        ({"X-Original-URI": "/api/v1/things"}, "X-Original-Method"),
        ({"X-Forwarded-Uri": "/api/v1/things"}, "X-Forwarded-Method"),
        ({"X-Original-URI": "api/v1/things", "X-Original-Method": "GET"}, "X-Original-URI"),
        ({"X-Original-URI": "/x", "X-Original-Method": "GET /"}, "X-Original-Method"),
    ],
)
async def test_a_hook_call_without_the_original_request_is_400(
    client: SidecarClient, headers: dict[str, str], field: str
) -> None:
    response = await client.get("/v1/authz", headers=headers | {"X-Tenant-Id": "ent-active"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["field"] == field
    if not headers:  # names every convention it looked for
        assert all(name in error["message"] for name in ("X-Original-URI", "X-Forwarded-Uri", "/v1/authz"))


async def test_for_nginx_a_denial_is_403_carrying_the_real_status(client: SidecarClient) -> None:
    headers = nginx("/api/v1/things", tenant="free-heavy") | {"X-Tiergate-Proxy": "nginx"}
    response = await client.get("/v1/authz", headers=headers)
    assert response.status == 403  # auth_request passes only 2xx, 401 and 403
    assert response.headers["X-Tiergate-Status"] == "429"
    assert int(response.headers["Retry-After"]) > 0
    error = json.loads(response.headers["X-Tiergate-Error"])
    assert (error["reason"], error["feature"], error["limit"]) == ("limit_exceeded", "api_calls", 1000)


async def test_unmatched_route_is_allowed_by_default(client: SidecarClient) -> None:
    response = await client.get("/v1/authz", headers=nginx("/static/app.js", tenant="nobody"))
    assert response.status == 200


async def test_first_matching_route_wins(client: SidecarClient) -> None:
    # GET /api/v1/reports/x matches the reports route (feature only) before the /api/** usage route,
    # so a free tenant is refused for the feature, not for its quota.
    response = await client.get("/v1/authz", headers=nginx("/api/v1/reports/x", "GET", tenant="free-heavy"))
    assert response.status == 403
    assert (await response.json())["reason"] == "not_in_plan"


async def used_api_calls(client: SidecarClient, tenant: str) -> int:
    response = await client.get("/v1/check", params={"tenant": tenant, "feature": "api_calls"})
    return int((await response.json())["used"])


async def test_requests_let_through_consume_the_routes_usage(client: SidecarClient) -> None:
    before = await used_api_calls(client, "free-light")
    for _ in range(3):
        response = await client.get("/v1/authz", headers=nginx("/api/v1/things", tenant="free-light"))
        assert response.status == 200
    assert await used_api_calls(client, "free-light") == before + 3


async def test_a_client_sent_request_id_does_not_deduplicate(client: SidecarClient) -> None:
    # With no TIERGATE_AUTHZ_REQUEST_ID_HEADER, no header is a dedup key: every call counts.
    before = await used_api_calls(client, "free-light")
    headers = nginx("/api/v1/things", tenant="free-light") | {"X-Request-Id": "req-7"}
    for _ in range(2):
        assert (await client.get("/v1/authz", headers=headers)).status == 200
    assert await used_api_calls(client, "free-light") == before + 2


async def test_a_refused_feature_consumes_nothing(client: SidecarClient) -> None:
    before = await used_api_calls(client, "free-light")
    response = await client.post("/v1/authz", headers=nginx("/api/v1/reports/1", "POST", tenant="free-light"))
    assert response.status == 403  # reports is not in the free tier
    assert await used_api_calls(client, "free-light") == before
