"""Bad input is a 400 naming the field, never a 500, and a deny is an answer, not an error."""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.integration.sidecar.conftest import SidecarClient


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"feature": "sso"}, "tenant"),
        ({"tenant": "", "feature": "sso"}, "tenant"),
        ({"tenant": "   ", "feature": "sso"}, "tenant"),
        ({"tenant": "t"}, "feature"),
        ({"tenant": "t", "feature": "sso", "quantity": "0"}, "quantity"),
        ({"tenant": "t", "feature": "sso", "quantity": "-3"}, "quantity"),
        ({"tenant": "t", "feature": "sso", "quantity": "abc"}, "quantity"),
        ({"tenant": "t", "feature": "sso", "quantity": "1.5"}, "quantity"),
        ({"tenant": "t", "feature": "sso", "quantity": str(10**12)}, "quantity"),
        ({"tenant": "t" * 201, "feature": "sso"}, "tenant"),
    ],
)
async def test_get_check_rejects(client: SidecarClient, params: dict[str, str], field: str) -> None:
    response = await client.get("/v1/check", params=params)
    assert response.status == 400
    assert (await response.json())["error"]["field"] == field


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("tenant=a&feature=sso&feature=reports", "feature"),
        ("tenant=a&tenant=b&feature=sso", "tenant"),
        ("tenant=a&feature=sso&quantity=1&quantity=1", "quantity"),
    ],
)
async def test_a_repeated_query_parameter_is_a_400(client: SidecarClient, query: str, field: str) -> None:
    response = await client.get(f"/v1/check?{query}")
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["field"] == field
    assert f"query parameter {field!r} is given 2 times" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tenant": "t", "feature": "sso", "quantity": "5"}, "quantity"),
        ({"tenant": "t", "feature": "sso", "quantity": True}, "quantity"),
        ({"tenant": "t", "feature": "sso", "quantity": 2.5}, "quantity"),
        ({"tenant": 42, "feature": "sso"}, "tenant"),
        ({"tenant": "t", "feature": "sso", "colour": "red"}, "colour"),
        ({"tenant": "t", "feature": None}, "feature"),
    ],
)
async def test_post_check_rejects(client: SidecarClient, body: dict[str, Any], field: str) -> None:
    response = await client.post("/v1/check", json=body)
    assert response.status == 400
    assert (await response.json())["error"]["field"] == field


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"{nope", "not JSON"), (b"[1, 2]", "JSON object"), (b"", "empty"), (b'"s"', "JSON object")],
)
async def test_post_check_rejects_non_objects(client: SidecarClient, raw: bytes, fragment: str) -> None:
    response = await client.post("/v1/check", data=raw, headers={"Content-Type": "application/json"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("bad_request", "body")
    assert fragment in error["message"]


async def test_oversized_body_is_rejected(client: SidecarClient) -> None:
    big = b'{"tenant": "' + b"x" * 2_000_000 + b'", "feature": "sso"}'
    response = await client.post(
        "/v1/check", data=io.BytesIO(big), headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "body"


async def test_batch_over_the_limit_is_rejected(client: SidecarClient) -> None:
    checks = [{"tenant": "t", "feature": "sso"}] * 1001
    response = await client.post("/v1/check/batch", json={"checks": checks})
    assert response.status == 400
    assert "1001" in (await response.json())["error"]["message"]


async def test_batch_names_the_bad_entry(client: SidecarClient) -> None:
    checks = [{"tenant": "t", "feature": "sso"}, {"tenant": "t", "feature": "sso", "quantity": 0}]
    response = await client.post("/v1/check/batch", json={"checks": checks})
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "checks[1].quantity"


@pytest.mark.parametrize("body", [{"checks": []}, {}, {"checks": "all"}])
async def test_batch_needs_a_list_of_checks(client: SidecarClient, body: dict[str, Any]) -> None:
    response = await client.post("/v1/check/batch", json=body)
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "checks"


async def test_unknown_route_and_method_use_the_error_shape(client: SidecarClient) -> None:
    missing = await client.get("/v1/nope")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    wrong = await client.delete("/v1/check")
    assert wrong.status == 405
    assert "error" in await wrong.json()
