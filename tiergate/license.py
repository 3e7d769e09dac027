"""Signed offline licenses: Ed25519 keys, issuing a license (a JWS with EdDSA) and verifying one.

A license is a JWS in compact form (RFC 7515, `header.payload.signature`) signed with EdDSA over
Ed25519 (RFC 8037) through PyJWT and cryptography: no cryptography of our own. Its header names
the signing key (`kid`, a short hash of the public key) and its type (`tiergate-license+jwt`, so
no other token signed by the same key passes for a license). The claims:

    lid        the license id (required)          sub      the tenant (required)
    tier       the catalog tier (required)        seats    the account's quantity (required)
    iat        issued at, Unix seconds (required) exp      not after, Unix seconds (required)
    grace      seconds of grace after exp (required)
    customer   the licensee's name                overrides {feature: true | false | {limit: N} | {}}
    period     usage periods: "month" (calendar months, the default) or "term" (iat to exp)

Expiry is not checked here: a license past `exp` still verifies, and the policy decides what its
dates mean (docs/policies.md). Pure apart from reading and writing key files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tiergate.catalog import FeatureValue
from tiergate.errors import LicenseError
from tiergate.feed import FeedOverride, value_document
from tiergate.models import Account, TenantId
from tiergate.periods import rfc3339

ALGORITHM = "EdDSA"
TOKEN_TYPE = "tiergate-license+jwt"
PRIVATE_KEY_FILE = "license.key"
PUBLIC_KEY_FILE = "license.pub"
CLAIM_MEANINGS = {
    "lid": "the license id",
    "sub": "the tenant",
    "tier": "the tier",
    "seats": "the seats",
    "iat": "the issue time",
    "exp": "the not-after time",
    "grace": "the grace period in seconds",
}


class LicenseClaims(BaseModel):
    """The payload as signed; claims a newer issuer adds are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    lid: str = Field(min_length=1, max_length=200)
    sub: TenantId
    tier: str = Field(min_length=1, max_length=200)
    seats: int = Field(ge=0)
    iat: int = Field(ge=0)
    exp: int = Field(ge=0)
    grace: int = Field(ge=0)
    customer: str | None = Field(default=None, max_length=500)
    overrides: dict[str, FeatureValue] = Field(default_factory=dict)
    period: Literal["month", "term"] = "month"


@dataclass(frozen=True)
class License:
    """A verified license: its claims and the id of the key that signed it."""

    claims: LicenseClaims
    key_id: str
    token: str = field(repr=False)

    @property
    def tenant(self) -> str:
        return self.claims.sub

    @property
    def issued_at(self) -> datetime:
        return datetime.fromtimestamp(self.claims.iat, UTC)

    @property
    def not_after(self) -> datetime:
        return datetime.fromtimestamp(self.claims.exp, UTC)

    @property
    def grace_until(self) -> datetime:
        return self.not_after + timedelta(seconds=self.claims.grace)

    def account(self) -> Account:
        """The tenant's account as the replica holds it: active on the tier, seats as quantity."""
        term = self.claims.period == "term"
        return Account(
            tenant=self.claims.sub,
            tier=self.claims.tier,
            status="active",
            quantity=self.claims.seats,
            current_period_start=self.issued_at if term else None,
            current_period_end=self.not_after if term else None,
        )

    def overrides(self) -> list[FeedOverride]:
        return [
            FeedOverride(tenant=self.claims.sub, feature=feature, value=value)
            for feature, value in sorted(self.claims.overrides.items())
        ]

    def facts(self) -> dict[str, Any]:
        """What the replica keeps and the policy reads (`input.license`): ids and dates."""
        return {
            "id": self.claims.lid,
            "tenant": self.claims.sub,
            "customer": self.claims.customer,
            "tier": self.claims.tier,
            "key_id": self.key_id,
            "issued_at": rfc3339(self.issued_at),
            "not_after": rfc3339(self.not_after),
            "grace_until": rfc3339(self.grace_until),
        }

    def describe(self) -> dict[str, Any]:
        """Everything a person checking the file wants to see (`tiergate license show`)."""
        overrides = {name: value_document(value) for name, value in self.claims.overrides.items()}
        return self.facts() | {
            "seats": self.claims.seats,
            "period": self.claims.period,
            "overrides": overrides,
        }


# -- keys ------------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key: names a key in `kid`."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_key_pair(directory: Path) -> tuple[Path, Path, str]:
    """A new Ed25519 pair as DIR/license.key (PKCS 8 PEM, mode 0600) and DIR/license.pub; never
    overwrites a key. Returns both paths and the key id."""
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise LicenseError(f"{path} already exists: keygen never overwrites a key; pick another --out")
    directory.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:  # created 0600: never readable by others, not even briefly
        out.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path, key_id(private_key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise LicenseError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path, "public key"))
    except ValueError as exc:
        raise LicenseError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LicenseError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_public_keys(paths: Sequence[Path]) -> dict[str, Ed25519PublicKey]:
    """Key id -> key, for each of `paths` (several during a rotation)."""
    if not paths:
        raise LicenseError("no public key configured to verify the license against")
    return {key_id(key): key for key in (load_public_key(path) for path in paths)}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LicenseError(f"cannot read the {what} {path}: {exc.strerror}") from None


# -- issuing ---------------------------------------------------------------------------------------


def issue(claims: LicenseClaims, private_key: Ed25519PrivateKey) -> str:
    """The signed license (compact JWS) for `claims`."""
    payload = claims.model_dump(mode="json", exclude_none=True)
    payload["overrides"] = {name: value_document(value) for name, value in claims.overrides.items()}
    if not payload["overrides"]:
        del payload["overrides"]
    headers = {"kid": key_id(private_key.public_key()), "typ": TOKEN_TYPE}
    return jwt.encode(payload, private_key, algorithm=ALGORITHM, headers=headers)


_DURATION = re.compile(r"^(\d+)([dhms])$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """'14d', '36h', '90m' or '30s' as seconds."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a duration; expected a number and d, h, m or s, e.g. 14d")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def parse_not_after(text: str) -> datetime:
    """A date (the license holds through that day, UTC: it ends at the next midnight) or an
    RFC 3339 time with an offset."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return day + timedelta(days=1)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a date (2027-12-31) nor an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; write e.g. 2027-12-31T23:59:59Z")
    return moment.astimezone(UTC)


_FEATURE_VALUE: TypeAdapter[Any] = TypeAdapter(FeatureValue)


def parse_override(text: str) -> tuple[str, bool | dict[str, Any]]:
    """'sso=true', 'reports=false', 'api_calls=5000' (a limit) or 'api_calls=unlimited'."""
    feature, sep, raw = text.partition("=")
    if not sep or not feature.strip() or not raw.strip():
        raise ValueError(f"{text!r} is not feature=value (value: true, false, a limit, or unlimited)")
    word = raw.strip().lower()
    value: object
    if word in ("true", "false"):
        value = word == "true"
    elif word == "unlimited":
        value = {}
    elif word.isdigit():
        value = {"limit": int(word)}
    else:
        raise ValueError(f"{text!r}: the value must be true, false, a whole number (a limit) or unlimited")
    _FEATURE_VALUE.validate_python(value)
    return feature.strip(), value


# -- verifying -------------------------------------------------------------------------------------


def verify(token: str, keys: Mapping[str, Ed25519PublicKey]) -> License:
    """The license `token` as signed by one of `keys` (key id -> key); raises LicenseError
    naming the reason (not a JWS, unsigned, another algorithm or type, an unknown key, a
    signature that does not verify, a missing or malformed claim)."""
    token = token.strip()
    header = _header(token)
    kid = _signing_key_id(header, keys)
    try:
        payload = jwt.decode(
            token,
            keys[kid],
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
        )
    except jwt.InvalidSignatureError:
        raise LicenseError(
            f"the signature does not verify against key {kid}: the license was altered after "
            "signing, or signed by another key"
        ) from None
    except jwt.PyJWTError as exc:
        raise LicenseError(f"the license is not a valid JWS: {exc}") from None
    return License(claims=parse_claims(payload), key_id=kid, token=token)


def _header(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise LicenseError(
            f"not a signed license: expected a JWS in compact form (header.payload.signature), got "
            f"{len(parts)} part{'s' if len(parts) != 1 else ''}"
        )
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, binascii.Error):
        raise LicenseError("not a signed license: its header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise LicenseError("not a signed license: its header is not a JSON object")
    algorithm = header.get("alg")
    if algorithm in (None, "none") or not parts[2]:
        raise LicenseError("the license is unsigned (alg none, or no signature); only EdDSA licenses verify")
    if algorithm != ALGORITHM:
        raise LicenseError(f"the license is signed with {algorithm!r}; only {ALGORITHM} (Ed25519) verifies")
    if header.get("typ") != TOKEN_TYPE:
        raise LicenseError(f"the token's type is {header.get('typ')!r}, not a license ({TOKEN_TYPE!r})")
    return header


def _signing_key_id(header: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str:
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise LicenseError("the license names no signing key (no 'kid' in its header)")
    if kid not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise LicenseError(
            f"the license is signed by key {kid}, which is not among the configured public keys "
            f"({known}); add its license.pub to TIERGATE_LICENSE_PUBLIC_KEYS"
        )
    return kid


def parse_claims(payload: Mapping[str, Any]) -> LicenseClaims:
    missing = [name for name in CLAIM_MEANINGS if name not in payload]
    if missing:
        named = ", ".join(f"{name!r} ({CLAIM_MEANINGS[name]})" for name in missing)
        raise LicenseError(f"the license lacks the claim{'s' if len(missing) > 1 else ''} {named}")
    try:
        claims = LicenseClaims.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"claim {'.'.join(str(p) for p in err['loc'])!r}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise LicenseError(f"the license has malformed claims: {problems}") from None
    if claims.exp <= claims.iat:
        raise LicenseError(f"the license ends (exp {claims.exp}) before it was issued (iat {claims.iat})")
    return claims
