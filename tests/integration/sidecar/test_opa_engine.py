"""The sidecar on TIERGATE_ENGINE=opa answers like the embedded engine (OPA's REST API served by
tests/opa_double.py, whose evaluation is the real OPA Go library)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.integration.sidecar.conftest import ClientFactory, SidecarClient
from tests.opa_double import create_opa_double
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings

ServerFactory = Callable[..., Awaitable[TestServer]]
CASES = [
    ("pro-active", "sso"),
    ("pro-active", "audit_log"),
    ("pro-overdue", "sso"),
    ("pro-trial-over", "dashboards"),
    ("free-heavy", "api_calls"),
    ("nobody", "teleport"),
]


async def answers(client: SidecarClient) -> list[tuple[Any, ...]]:
    found = []
    for tenant, feature in CASES:
        response = await client.get("/v1/check", params={"tenant": tenant, "feature": feature})
        d = await response.json()
        found.append((d["allow"], d["reason"], d["tier"], d["limit"], d["used"], d["valid_until"]))
    return found


@pytest.fixture
async def opa_url(aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(create_opa_double(), host="127.0.0.1")
    return str(server.make_url("")).rstrip("/")


async def test_opa_engine_gives_the_embedded_engines_answers(
    aiohttp_client: ClientFactory, settings: SidecarSettings, opa_url: str
) -> None:
    embedded = await aiohttp_client(create_app(settings))
    opa_settings = settings.model_copy(update={"engine": "opa", "opa_url": opa_url})
    opa = await aiohttp_client(create_app(opa_settings))
    assert (await (await opa.get("/readyz")).json())["ready"] is True
    assert await answers(opa) == await answers(embedded)
    status = await (await opa.get("/v1/status")).json()
    assert status["engine"] == "opa"


async def test_opa_engine_down_is_a_policy_error_deny_and_not_ready(
    aiohttp_client: ClientFactory, settings: SidecarSettings, aiohttp_server: ServerFactory
) -> None:
    server = await aiohttp_server(create_opa_double(), host="127.0.0.1")
    opa_settings = settings.model_copy(
        update={"engine": "opa", "opa_url": str(server.make_url("")).rstrip("/"), "decision_cache_size": 0}
    )
    client = await aiohttp_client(create_app(opa_settings))
    await server.close()
    response = await client.get("/v1/check", params={"tenant": "pro-active", "feature": "sso"})
    decision = await response.json()
    assert (response.status, decision["allow"], decision["reason"]) == (200, False, "policy_error")
    assert (await client.get("/readyz")).status == 503
