"""Who the tenant of a hook call is: a header the proxy sets from its own authentication, or a
bearer JWT the sidecar verifies (HS256 with a shared secret; RS256 / ES256 with keys from a JWKS file)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import jwt
import structlog

from tiergate.errors import BadRequestError, SettingsError, UnauthenticatedError
from tiergate.models import TENANT_RULE, tenant_problem

log = structlog.get_logger("tiergate.ingress")

MAX_TOKEN = 8192
ASYMMETRIC = ("RS256", "ES256")
JWKS_RECHECK_S = 10.0  # a rotated key file (a re-mounted Secret) is picked up within this


class TenantIdentity(Protocol):
    def tenant(self, headers: Mapping[str, str]) -> str:
        """The tenant, or UnauthenticatedError (401); a malformed value is BadRequestError."""
        ...


class HeaderIdentity:
    """The tenant header: trustworthy only because the proxy overwrites whatever the client sent."""

    def __init__(self, header: str) -> None:
        self.header = header

    def tenant(self, headers: Mapping[str, str]) -> str:
        tenant = (headers.get(self.header) or "").strip()
        if not tenant:
            raise UnauthenticatedError(
                f"no tenant: the {self.header} header is missing or empty", field=self.header
            )
        problem = tenant_problem(tenant)
        if problem is not None:
            raise BadRequestError(f"{self.header}: the tenant id {problem}", field=self.header)
        return tenant


class JwtIdentity:
    """`Authorization: Bearer <JWT>`; the tenant is a claim of a token whose signature verifies."""

    def __init__(
        self,
        *,
        secret: str | None,
        jwks_path: Path | None,
        tenant_claim: str,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        self.secret = secret
        self.jwks = JwksFile(jwks_path) if jwks_path is not None else None
        self.tenant_claim = tenant_claim
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.algorithms = (["HS256"] if secret else []) + (list(ASYMMETRIC) if jwks_path else [])

    def __repr__(self) -> str:  # never the secret
        return f"JwtIdentity(algorithms={self.algorithms}, tenant_claim={self.tenant_claim!r})"

    def tenant(self, headers: Mapping[str, str]) -> str:
        token = bearer_token(headers.get("Authorization"))
        try:
            header = jwt.get_unverified_header(token)
            key = self._key(header)
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(header.get("alg"))],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError(f"bearer token rejected: {exc}", field="Authorization") from None
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or tenant_problem(tenant.strip()) is not None:
            raise UnauthenticatedError(
                f"bearer token has no usable {self.tenant_claim!r} claim ({TENANT_RULE}; see "
                "TIERGATE_JWT_TENANT_CLAIM)",
                field="Authorization",
            )
        return tenant.strip()

    def _key(self, header: Mapping[str, object]) -> str | jwt.PyJWK:
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise jwt.InvalidAlgorithmError(
                f"algorithm {alg!r} is not accepted (accepted: {self.algorithms})"
            )
        if alg == "HS256" and self.secret is not None:
            return self.secret
        assert self.jwks is not None  # the algorithm is accepted only with a JWKS file
        return self.jwks.key(header.get("kid"), str(alg))


def bearer_token(value: str | None) -> str:
    if not value:
        raise UnauthenticatedError("no tenant: the Authorization header is missing", field="Authorization")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthenticatedError("Authorization: expected 'Bearer <JWT>'", field="Authorization")
    if len(token) > MAX_TOKEN:
        raise UnauthenticatedError(f"bearer token longer than {MAX_TOKEN} bytes", field="Authorization")
    return token


class JwksFile:
    """Public keys from a JWKS file, re-read when the file changes (key rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._checked = 0.0
        self._keys: list[jwt.PyJWK] = []
        try:
            self._load()
        except (OSError, ValueError, jwt.PyJWTError) as exc:  # fail start-up, loudly
            raise SettingsError(f"TIERGATE_JWT_JWKS_PATH={path}: cannot load its keys: {exc}") from exc
        if not self._keys:
            raise SettingsError(f"TIERGATE_JWT_JWKS_PATH={path}: no RS256 or ES256 (P-256) key in it")

    def key(self, kid: object, alg: str) -> jwt.PyJWK:
        now = time.monotonic()
        if now - self._checked > JWKS_RECHECK_S:
            self._checked = now
            try:
                if self.path.stat().st_mtime != self._mtime:
                    self._load()
            except (OSError, ValueError, jwt.PyJWTError) as exc:  # keep the keys we have; retry later
                log.warning("jwks_reload_failed", path=str(self.path), error=str(exc))
        candidates = [k for k in self._keys if k.algorithm_name == alg and (kid is None or k.key_id == kid)]
        if not candidates:
            raise jwt.InvalidKeyError(f"no {alg} key with kid {kid!r} in {self.path}")
        return candidates[0]

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime
        keys = jwt.PyJWKSet.from_json(self.path.read_text(encoding="utf-8")).keys
        self._keys = [k for k in keys if k.algorithm_name in ASYMMETRIC]
        self._mtime = mtime
