"""deploy/traefik/middleware.yaml against a real sidecar (JWT identity), with Traefik's ForwardAuth
played by a double built from its documented contract (doc.traefik.io, ForwardAuth): it sends the
original method and URI as X-Forwarded-Method / X-Forwarded-Uri plus only `authRequestHeaders`;
a non-2xx answer goes back to the client as it is; on a 2xx it strips the request's headers matching
`authResponseHeadersRegex` and copies the answer's matching headers onto it. No Traefik binary runs."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import yaml
from pydantic import SecretStr

from tests.integration.sidecar.conftest import ClientFactory, SidecarClient
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings

ROOT = Path(__file__).parents[3]
SECRET = "traefik-test-secret-long-enough-for-hs256-0123456789"
FORWARD_AUTH: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "traefik" / "middleware.yaml").read_text())[
    "spec"
]["forwardAuth"]


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: SidecarSettings) -> SidecarClient:
    jwt_mode = {"authz_identity": "jwt", "jwt_secret": SecretStr(SECRET), "jwt_tenant_claim": "tenant"}
    return await aiohttp_client(create_app(settings.model_copy(update=jwt_mode)))


async def forward_auth(
    client: SidecarClient, method: str, uri: str, request_headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    """(status the client gets, headers the upstream gets) as Traefik's ForwardAuth would produce."""
    sent = {
        name: value for name, value in request_headers.items() if name in FORWARD_AUTH["authRequestHeaders"]
    }
    sent |= {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, "X-Forwarded-Host": "app.example.com"}
    answer = await client.get(urlsplit(FORWARD_AUTH["address"]).path, headers=sent)
    if not 200 <= answer.status < 300:
        return answer.status, {}
    regex = re.compile(FORWARD_AUTH["authResponseHeadersRegex"])
    upstream = {name: value for name, value in request_headers.items() if not regex.search(name)}
    upstream |= {name: value for name, value in answer.headers.items() if regex.search(name)}
    return answer.status, upstream


def bearer(tenant: str) -> dict[str, str]:
    return {
        "Authorization": "Bearer " + jwt.encode({"tenant": tenant, "exp": int(time.time()) + 3600}, SECRET)
    }


async def test_the_sidecars_headers_reach_the_upstream_and_forged_ones_do_not(client: SidecarClient) -> None:
    forged = {"X-Tenant-Id": "ent-active", "X-Tiergate-Tier": "enterprise", "X-Tiergate-Admin": "yes"}
    status, upstream = await forward_auth(
        client, "POST", "/api/v1/reports/1", bearer("starter-active") | forged
    )
    assert status == 200
    assert (upstream["X-Tiergate-Tenant"], upstream["X-Tiergate-Tier"]) == ("starter-active", "starter")
    assert "X-Tiergate-Admin" not in upstream


@pytest.mark.parametrize(
    ("tenant", "uri", "status"),
    [
        ("free-heavy", "/api/v1/things", 429),
        ("starter-active", "/api/v1/audit/x", 403),
        (None, "/api/v1/things", 401),
    ],
)
async def test_denials_reach_the_client_with_their_status(
    client: SidecarClient, tenant: str | None, uri: str, status: int
) -> None:
    # A forged X-Tenant-Id is not among authRequestHeaders: without a token there is no tenant.
    headers = bearer(tenant) if tenant else {"X-Tenant-Id": "ent-active"}
    assert (await forward_auth(client, "GET", uri, headers))[0] == status
