"""TIERGATE_AUTHZ_IDENTITY=jwt: the tenant is a claim of a bearer token whose signature verifies."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from tests.integration.sidecar.conftest import ClientFactory, SidecarClient
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings

SECRET = "test-shared-secret-long-enough-for-hs384-and-hs512-keys-0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks() -> str:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    return json.dumps({"keys": [rsa_jwk | {"kid": "rsa-1", "alg": "RS256"}, ec_jwk | {"kid": "ec-1"}]})


@pytest.fixture
async def client(aiohttp_client: ClientFactory, settings: SidecarSettings, tmp_path: Path) -> SidecarClient:
    keys = tmp_path / "jwks.json"
    keys.write_text(jwks())
    update = {
        "authz_identity": "jwt",
        "jwt_secret": SecretStr(SECRET),
        "jwt_jwks_path": keys,
        "jwt_tenant_claim": "org",
    }
    return await aiohttp_client(create_app(settings.model_copy(update=update)))


def token(
    claims: dict[str, Any] | None = None, key: Any = SECRET, alg: str = "HS256", kid: str | None = None
) -> str:
    body = {"org": "ent-active", "exp": int(time.time()) + 3600} | (claims or {})
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def unsigned() -> str:
    """alg "none": a token anyone can make."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    claims = json.dumps({"org": "ent-active", "exp": int(time.time()) + 3600}).encode()
    return f"{header}.{base64.urlsafe_b64encode(claims).rstrip(b'=').decode()}."


async def authz(client: SidecarClient, authorization: str | None, tenant_header: str | None = None) -> Any:
    headers = {"X-Original-URI": "/api/v1/audit/events", "X-Original-Method": "GET"}
    headers |= {"Authorization": authorization} if authorization else {}
    headers |= {"X-Tenant-Id": tenant_header} if tenant_header else {}
    return await client.get("/v1/authz", headers=headers)


@pytest.mark.parametrize(
    ("key", "alg", "kid"), [(SECRET, "HS256", None), (RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")]
)
async def test_a_verified_token_names_the_tenant(
    client: SidecarClient, key: Any, alg: str, kid: str | None
) -> None:
    response = await authz(client, f"Bearer {token(key=key, alg=alg, kid=kid)}")
    assert response.status == 200
    assert (response.headers["X-Tiergate-Tenant"], response.headers["X-Tiergate-Tier"]) == (
        "ent-active",
        "enterprise",
    )


async def test_the_tenant_header_is_ignored_in_jwt_mode(client: SidecarClient) -> None:
    # The token says pro-active (no audit log in pro); a forged header saying ent-active changes nothing.
    response = await authz(client, f"Bearer {token({'org': 'pro-active'})}", tenant_header="ent-active")
    assert response.status == 403
    assert (await response.json())["reason"] == "not_in_plan"


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        (None, "Authorization header is missing"),
        ("Basic dXNlcjpwYXNz", "expected 'Bearer <JWT>'"),
        ("Bearer not-a-jwt", "bearer token rejected"),
        (
            f"Bearer {token(key='another-secret-long-enough-for-hs256-0123456789')}",
            "Signature verification failed",
        ),
        (f"Bearer {token(key=OTHER_RSA_KEY, alg='RS256', kid='rsa-1')}", "Signature verification failed"),
        (f"Bearer {token({'exp': int(time.time()) - 3600})}", "expired"),
        (f"Bearer {token({'exp': None})}", "exp"),
        (f"Bearer {token({'org': 42})}", "'org' claim"),
        (f"Bearer {token(alg='HS384')}", "not accepted"),
        (f"Bearer {unsigned()}", "not accepted"),
    ],
)
async def test_a_token_that_does_not_verify_is_401(
    client: SidecarClient, authorization: str | None, says: str
) -> None:
    response = await authz(client, authorization)
    assert response.status == 401
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("unauthenticated", "Authorization")
    assert says in error["message"]


def test_jwt_mode_needs_a_key(settings: SidecarSettings) -> None:
    with pytest.raises(ValueError, match="TIERGATE_JWT_SECRET"):
        SidecarSettings.model_validate(settings.model_dump() | {"authz_identity": "jwt"})


def test_a_short_shared_secret_is_refused(settings: SidecarSettings) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SidecarSettings.model_validate(settings.model_dump() | {"jwt_secret": "short"})
