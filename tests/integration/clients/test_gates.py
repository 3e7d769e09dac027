"""The aiohttp middleware and the FastAPI dependency gate routes of test apps on a real sidecar."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fastapi import Depends, FastAPI

from demo.processes import free_port
from tests.integration.clients.conftest import RunningSidecar
from tiergate.client import AsyncTiergateClient, Decision, FailPolicy
from tiergate.client.aiohttp_gate import DECISION, feature_gate, requires
from tiergate.client.fastapi_gate import FeatureDenied, FeatureGate, render_denial

AppClient = TestClient[web.Request, web.Application]

# (tenant header, route) -> (status, reason in the body)
CASES = [
    ("pro-active", "/reports", 200, None),
    ("nobody", "/reports", 403, "not_in_plan"),
    ("pro-overdue", "/reports", 403, "payment_overdue"),
    ("pro-active", "/bulk-calls", 429, "limit_exceeded"),  # 2 of the 1 api_call left
    (None, "/reports", 401, None),
    (None, "/open", 200, None),
]


@pytest.fixture
async def tiergate(sidecar: RunningSidecar) -> AsyncIterator[AsyncTiergateClient]:
    async with AsyncTiergateClient(sidecar.url, timeout_s=5) as client:
        yield client


def aiohttp_app(client: AsyncTiergateClient) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/reports")
    @requires("reports")
    async def reports(request: web.Request) -> web.Response:
        decision = request[DECISION]
        return web.json_response({"tier": decision.tier})

    @routes.get("/bulk-calls")
    @requires("api_calls", quantity=2)
    async def bulk(request: web.Request) -> web.Response:
        return web.json_response({})

    @routes.get("/open")
    async def open_route(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(middlewares=[feature_gate(client)])
    app.add_routes(routes)
    return app


def fastapi_app(client: AsyncTiergateClient) -> FastAPI:
    gate = FeatureGate(client)
    app = FastAPI(exception_handlers={FeatureDenied: render_denial})

    @app.get("/reports")
    async def reports(decision: Annotated[Decision, Depends(gate.requires("reports"))]) -> dict[str, Any]:
        return {"tier": decision.tier}

    @app.get("/bulk-calls", dependencies=[Depends(gate.requires("api_calls", quantity=2))])
    async def bulk() -> dict[str, Any]:
        return {}

    @app.get("/open")
    async def open_route() -> dict[str, Any]:
        return {}

    return app


Get = Callable[[str, str | None], Awaitable[tuple[int, dict[str, str], Any]]]


@pytest.fixture(params=["aiohttp", "fastapi"])
async def get(
    request: pytest.FixtureRequest,
    tiergate: AsyncTiergateClient,
    aiohttp_client: Callable[..., Awaitable[AppClient]],
) -> AsyncIterator[Get]:
    if request.param == "aiohttp":
        app_client = await aiohttp_client(aiohttp_app(tiergate))

        async def via_aiohttp(path: str, tenant: str | None) -> tuple[int, dict[str, str], Any]:
            response = await app_client.get(path, headers={"X-Tenant-Id": tenant} if tenant else {})
            return response.status, dict(response.headers), await response.json()

        yield via_aiohttp
        return
    transport = httpx.ASGITransport(app=fastapi_app(tiergate))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:

        async def via_fastapi(path: str, tenant: str | None) -> tuple[int, dict[str, str], Any]:
            response = await http.get(path, headers={"X-Tenant-Id": tenant} if tenant else {})
            return response.status_code, dict(response.headers), response.json()

        yield via_fastapi


@pytest.mark.parametrize(("tenant", "path", "status", "reason"), CASES)
async def test_gate_answers(get: Get, tenant: str | None, path: str, status: int, reason: str | None) -> None:
    got_status, headers, body = await get(path, tenant)
    assert got_status == status, body
    if reason is not None:
        assert (body["allow"], body["reason"], body["decision"]["reason"]) == (False, reason, reason)
    if status == 429:
        assert int(headers.get("Retry-After") or headers.get("retry-after") or 0) >= 1
    if status == 401:
        assert body["error"]["field"] == "X-Tenant-Id"
    if path == "/reports" and status == 200:
        assert body == {"tier": "pro"}


@pytest.mark.parametrize("framework", ["aiohttp", "fastapi"])
async def test_gate_without_a_sidecar_follows_the_fail_policy(
    framework: str, aiohttp_client: Callable[..., Awaitable[AppClient]]
) -> None:
    policy = FailPolicy(features={"reports": "fail_open"})
    async with AsyncTiergateClient(f"http://127.0.0.1:{free_port()}", fail_policy=policy) as client:
        if framework == "aiohttp":
            app_client = await aiohttp_client(aiohttp_app(client))
            opened = await app_client.get("/reports", headers={"X-Tenant-Id": "t"})
            closed = await app_client.get("/bulk-calls", headers={"X-Tenant-Id": "t"})
            statuses = (opened.status, closed.status, (await closed.json())["reason"])
        else:
            transport = httpx.ASGITransport(app=fastapi_app(client))
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                ok = await http.get("/reports", headers={"X-Tenant-Id": "t"})
                shut = await http.get("/bulk-calls", headers={"X-Tenant-Id": "t"})
                statuses = (ok.status_code, shut.status_code, shut.json()["reason"])
    assert statuses == (200, 503, "sidecar_unreachable")
