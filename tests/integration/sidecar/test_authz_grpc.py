"""Envoy's gRPC ext_authz: a real gRPC client sends CheckRequests to the sidecar's Authorization
service, and gets the same decisions, headers and statuses as /v1/authz."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from tests.integration.sidecar.conftest import ClientFactory, SidecarClient
from tiergate.sidecar.app import create_app
from tiergate.sidecar.ingress.grpc_ext_authz import GRPC_PORT
from tiergate.sidecar.settings import SidecarSettings


@pytest.fixture
async def served(aiohttp_client: ClientFactory, settings: SidecarSettings) -> SidecarClient:
    update = {"authz_grpc_host": "127.0.0.1", "authz_grpc_port": 0}
    return await aiohttp_client(create_app(settings.model_copy(update=update)))


@pytest.fixture
async def stub(served: SidecarClient) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.app[GRPC_PORT]}") as channel:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


def check_request(method: str, path: str, headers: dict[str, str]) -> Any:
    http = attribute_context_pb2.AttributeContext.HttpRequest(method=method, path=path, headers=headers)
    request = attribute_context_pb2.AttributeContext.Request(http=http)
    return external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(request=request))


def headers_of(options: Any) -> dict[str, str]:
    return {option.header.key.lower(): option.header.value for option in options}


async def test_an_allowed_request_gets_the_sidecars_headers_and_loses_forged_ones(stub: Any) -> None:
    forged = {"x-tiergate-tier": "enterprise", "x-tiergate-admin": "yes"}
    response = await stub.Check(
        check_request("POST", "/api/v1/reports/7?x=1", {"x-tenant-id": "pro-active"} | forged)
    )
    assert response.status.code == code_pb2.OK
    added = headers_of(response.ok_response.headers)
    assert (added["x-tiergate-tier"], added["x-tiergate-tenant"], added["x-tiergate-remaining"]) == (
        "pro",
        "pro-active",
        "0",
    )
    assert list(response.ok_response.headers_to_remove) == ["x-tiergate-admin"]


async def test_over_quota_is_429_with_retry_after_and_a_json_reason(stub: Any) -> None:
    response = await stub.Check(check_request("GET", "/api/v1/things", {"x-tenant-id": "free-heavy"}))
    assert response.status.code == code_pb2.RESOURCE_EXHAUSTED
    denied = response.denied_response
    assert denied.status.code == 429
    headers = headers_of(denied.headers)
    assert int(headers["retry-after"]) > 0 and headers["content-type"] == "application/json"
    body = json.loads(denied.body)
    assert (body["reason"], body["decision"]["feature"]) == ("limit_exceeded", "api_calls")


@pytest.mark.parametrize(
    ("method", "path", "headers", "http_status", "grpc_code"),
    [
        ("GET", "/api/v1/audit/x", {"x-tenant-id": "starter-active"}, 403, code_pb2.PERMISSION_DENIED),
        ("POST", "/api/v1/reports/1", {"x-tenant-id": "pro-unpaid"}, 403, code_pb2.PERMISSION_DENIED),
        ("GET", "/api/v1/things", {}, 401, code_pb2.UNAUTHENTICATED),
        ("GET", "", {"x-tenant-id": "ent-active"}, 400, code_pb2.INVALID_ARGUMENT),
        # The client's own X-Original-URI is not the request Envoy asks about.
        (
            "GET",
            "/api/v1/audit/x",
            {"x-tenant-id": "starter-active", "x-original-uri": "/static/a.js"},
            403,
            7,
        ),
    ],
)
async def test_denials_answer_like_the_http_hook(
    stub: Any,
    served: SidecarClient,
    method: str,
    path: str,
    headers: dict[str, str],
    http_status: int,
    grpc_code: int,
) -> None:
    response = await stub.Check(check_request(method, path, headers))
    assert (response.status.code, response.denied_response.status.code) == (grpc_code, http_status)
    if path:
        own = {name: value for name, value in headers.items() if not name.startswith("x-original")}
        http_headers = {"X-Original-URI": path, "X-Original-Method": method} | own
        assert (await served.get("/v1/authz", headers=http_headers)).status == http_status


def raw_header_request(path: str, header_map: dict[str, bytes], headers: dict[str, str] | None = None) -> Any:
    entries = [base_pb2.HeaderValue(key=k, raw_value=v) for k, v in header_map.items()]
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="GET", path=path, headers=headers or {}, header_map=base_pb2.HeaderMap(headers=entries)
    )
    request = attribute_context_pb2.AttributeContext.Request(http=http)
    return external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(request=request))


@pytest.mark.parametrize("raw", [b"pro-\xffactive", b"\xfe\xff", b"caf\xe9"])
async def test_a_header_value_that_is_not_utf8_is_a_400_naming_it(stub: Any, raw: bytes) -> None:
    response = await stub.Check(raw_header_request("/api/reports", {"x-tenant-id": raw}))
    assert response.status.code == code_pb2.INVALID_ARGUMENT
    assert response.denied_response.status.code == 400
    error = json.loads(response.denied_response.body)["error"]
    assert error["field"] == "x-tenant-id" and "UTF-8" in error["message"], error


async def test_header_map_wins_over_headers(stub: Any) -> None:
    request = raw_header_request("/api/reports", {"x-tenant-id": b"pro-active"}, {"x-tenant-id": "nobody"})
    response = await stub.Check(request)
    assert response.status.code == code_pb2.OK
    assert headers_of(response.ok_response.headers)["x-tiergate-tenant"] == "pro-active"
