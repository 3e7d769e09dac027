"""A daemon on each mirror backend with the credits catalog (tests/integration/credits/plans.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from tests.conftest import MirrorBackend
from tests.integration.daemon.conftest import AUTH as FEED_AUTH
from tests.integration.daemon.conftest import make_settings
from tiergate.sync_daemon.app import create_app
from tiergate.sync_daemon.mirror.store import Mirror
from tiergate.sync_daemon.state import MIRROR

PLANS = Path(__file__).parent / "plans.yaml"
API_TOKEN = "api-token-for-credits-tests"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
Client = TestClient[web.Request, web.Application]


@dataclass
class CreditsDaemon:
    client: Client

    @property
    def mirror(self) -> Mirror:
        return self.client.app[MIRROR]

    async def grant(self, tenant: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
        headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
        response = await self.client.post(f"/v1/tenants/{tenant}/credits/grants", json=body, headers=headers)
        return response.status, await response.json()

    async def credits(self, tenant: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/tenants/{tenant}/credits", headers=AUTH)
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body

    async def balance(self, tenant: str, credit_type: str = "ai_credits") -> Any:
        found = [c for c in (await self.credits(tenant))["credits"] if c["credit_type"] == credit_type]
        return found[0]["balance"] if found else 0

    async def usage(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        response = await self.client.post("/v1/usage/batch", json={"events": events}, headers=FEED_AUTH)
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


@pytest.fixture
async def credits_daemon(
    aiohttp_client: Any, mirror_backend: MirrorBackend, request: pytest.FixtureRequest
) -> CreditsDaemon:
    """The daemon with the credits catalog and an API token, on each mirror backend."""
    settings = make_settings(
        mirror_backend.path,
        "http://127.0.0.1:9",
        plans=PLANS,
        api_token=SecretStr(API_TOKEN),
        stripe_refetch=False,
        **mirror_backend.settings(),
        **getattr(request, "param", {}),
    )
    return CreditsDaemon(await aiohttp_client(create_app(settings)))
