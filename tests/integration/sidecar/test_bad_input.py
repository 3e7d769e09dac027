"""Bad input is a 400 naming the field, never a 500, and a deny is an answer, not an error."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.sidecar.conftest import SidecarClient
from tiergate.models import Decision
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sidecar.state import DECISIONS


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
        ({"tenant": "tab\there", "feature": "sso"}, "tenant"),  # the one tenant id rule (tiergate.models)
        ({"tenant": "nul\x00", "feature": "sso"}, "tenant"),
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


async def test_a_valid_body_over_64_kib_arriving_in_pieces_is_read_whole(client: SidecarClient) -> None:
    """A body read with content.read(n) was cut at whatever had arrived: random 400s."""
    checks = [{"tenant": f"t_{i:04d}_" + "x" * 80, "feature": "sso"} for i in range(900)]
    body = json.dumps({"checks": checks}).encode()
    assert len(body) > 64 * 1024

    async def slowly() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]
            await asyncio.sleep(0.001)

    response = await client.post(
        "/v1/check/batch", data=slowly(), headers={"Content-Type": "application/json"}
    )
    assert response.status == 200, await response.text()
    assert len((await response.json())["decisions"]) == 900


async def raw_request(client: SidecarClient, head: bytes) -> int:
    """Send bytes no HTTP client library would (non-UTF-8 header values); return the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head + b"Host: sidecar\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/authz HTTP/1.1\r\nX-Tenant-Id: t\xff\xfe\r\n",
        b"GET /v1/authz HTTP/1.1\r\nX-Tenant-Id: t\r\nAuthorization: Bearer \xc3\x28\r\n",
        b"GET /v1/authz HTTP/1.1\r\nX-Tenant-Id: t\r\nX-Original-URI: /api/\xff\r\n",
        b"GET /v1/check?tenant=t&feature=sso HTTP/1.1\r\nX-Anything: \x80\r\n",
    ],
)
async def test_header_bytes_that_are_not_utf8_are_a_400(client: SidecarClient, head: bytes) -> None:
    assert await raw_request(client, head) == 400


async def test_a_405_names_the_allowed_methods(client: SidecarClient) -> None:
    response = await client.delete("/v1/check")
    assert response.status == 405 and set(response.headers["Allow"].split(",")) >= {"GET", "POST"}
    assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_a_large_batch_lets_other_checks_through(
    aiohttp_client: Any, settings: SidecarSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of cache misses once held the event loop until it was done (p99 4.7 -> 166 ms)."""
    client = await aiohttp_client(
        create_app(settings.model_copy(update={"max_batch": 10_000, "decision_log_denies": False}))
    )
    service = client.app[DECISIONS]
    deciding = asyncio.Event()
    decide = service.decide

    async def noticed(tenant: str, feature: str, quantity: int = 1) -> Decision:
        deciding.set()
        answer: Decision = await decide(tenant, feature, quantity)
        return answer

    monkeypatch.setattr(service, "decide", noticed)
    checks = [{"tenant": f"t_{i}", "feature": "sso"} for i in range(2000)]
    finished: list[str] = []

    async def batch() -> None:
        assert (await client.post("/v1/check/batch", json={"checks": checks})).status == 200
        finished.append("batch")

    async def single() -> None:
        await deciding.wait()  # the batch is deciding: only its yields let this one in
        assert (await client.get("/v1/check", params={"tenant": "solo", "feature": "sso"})).status == 200
        finished.append("single")

    await asyncio.gather(batch(), single())
    assert finished == ["single", "batch"]


@pytest.mark.parametrize("tenant", ["tab\there", "del\x7f", "t" * 201])
async def test_a_tenant_id_breaking_the_rule_is_refused_on_every_path(
    client: SidecarClient, tenant: str
) -> None:
    reserve = await client.post("/v1/check", json={"tenant": tenant, "feature": "sso", "reserve": True})
    assert reserve.status == 400 and (await reserve.json())["error"]["field"] == "tenant"
    if tenant.isprintable() or "\t" in tenant:  # a client refuses to send the other control characters
        hook = {"X-Tenant-Id": tenant, "X-Original-URI": "/api/reports", "X-Original-Method": "GET"}
        authz = await client.get("/v1/authz", headers=hook)
        assert authz.status == 400 and (await authz.json())["error"]["field"] == "X-Tenant-Id"
