"""Signed offline licenses: issue and verify round trip, and every way a license is refused."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiergate.errors import LicenseError
from tiergate.license import (
    TOKEN_TYPE,
    LicenseClaims,
    issue,
    key_id,
    load_private_key,
    load_public_keys,
    parse_duration,
    parse_not_after,
    parse_override,
    verify,
    write_key_pair,
)

IAT = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
EXP = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())


def claims(**changes: Any) -> LicenseClaims:
    base: dict[str, Any] = {
        "lid": "lic_1",
        "sub": "acme",
        "tier": "enterprise",
        "seats": 50,
        "iat": IAT,
        "exp": EXP,
        "grace": 14 * 86400,
        "customer": "Acme GmbH",
        "overrides": {"sso": True, "api_calls": {"limit": 5000}},
    }
    return LicenseClaims.model_validate(base | changes)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Ed25519PrivateKey]:
    """Two pairs on disk (a and b), loaded back from their files."""
    write_key_pair(tmp_path / "a")
    write_key_pair(tmp_path / "b")
    return load_private_key(tmp_path / "a" / "license.key"), load_private_key(tmp_path / "b" / "license.key")


def public(*private: Ed25519PrivateKey) -> dict[str, Any]:
    return {key_id(k.public_key()): k.public_key() for k in private}


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    private, public_path, kid = write_key_pair(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert list(load_public_keys([public_path])) == [kid]
    with pytest.raises(LicenseError, match="never overwrites"):
        write_key_pair(tmp_path / "keys")


def test_a_license_verifies_and_becomes_an_account_with_overrides(keys: tuple[Any, Any]) -> None:
    a, _ = keys
    license = verify(issue(claims(), a), public(a))
    assert license.key_id == key_id(a.public_key())
    account = license.account()
    assert (account.tenant, account.tier, account.status, account.quantity) == (
        "acme",
        "enterprise",
        "active",
        50,
    )
    assert account.current_period_start is None  # calendar-month usage periods by default
    assert {o.feature: o.value_document() for o in license.overrides()} == {
        "sso": True,
        "api_calls": {"limit": 5000},
    }
    assert license.facts() == {
        "id": "lic_1",
        "tenant": "acme",
        "customer": "Acme GmbH",
        "tier": "enterprise",
        "key_id": license.key_id,
        "issued_at": "2026-01-01T00:00:00Z",
        "not_after": "2027-01-01T00:00:00Z",
        "grace_until": "2027-01-15T00:00:00Z",
    }


def test_a_term_license_counts_usage_over_its_whole_term(keys: tuple[Any, Any]) -> None:
    a, _ = keys
    account = verify(issue(claims(period="term"), a), public(a)).account()
    assert account.current_period_start == datetime(2026, 1, 1, tzinfo=UTC)
    assert account.current_period_end == datetime(2027, 1, 1, tzinfo=UTC)


def test_rotation_any_configured_key_verifies_its_own_licenses(keys: tuple[Any, Any]) -> None:
    a, b = keys
    both = public(a, b)
    assert verify(issue(claims(lid="by_a"), a), both).claims.lid == "by_a"
    assert verify(issue(claims(lid="by_b"), b), both).key_id == key_id(b.public_key())


def flip_a_byte(token: str, part: int) -> str:
    pieces = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(pieces[part] + "=" * (-len(pieces[part]) % 4)))
    raw[len(raw) // 2] ^= 0x01
    pieces[part] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    return ".".join(pieces)


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    def b64(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(payload)}."


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda t, a, b: flip_a_byte(t, 1), "does not verify against key"),  # the claims changed
        (lambda t, a, b: flip_a_byte(t, 2), "does not verify against key"),  # the signature changed
        (lambda t, a, b: issue(claims(), b), "not among the configured public keys"),
        (lambda t, a, b: t.replace(".", "", 1), "expected a JWS in compact form"),
        (lambda t, a, b: "not a license at all", "got 1 part"),
        (
            lambda t, a, b: unsigned(claims().model_dump(), {"alg": "none", "typ": TOKEN_TYPE}),
            "unsigned",
        ),
        (
            lambda t, a, b: jwt.encode(claims().model_dump(exclude_none=True), "k" * 32, algorithm="HS256",
                                       headers={"typ": TOKEN_TYPE, "kid": key_id(a.public_key())}),
            "only EdDSA",
        ),
        (
            lambda t, a, b: jwt.encode(claims().model_dump(exclude_none=True), a, algorithm="EdDSA",
                                       headers={"kid": key_id(a.public_key())}),
            "not a license",
        ),
        (lambda t, a, b: jwt.encode({"lid": "x"}, a, algorithm="EdDSA", headers={"typ": TOKEN_TYPE}), "no signing key"),
    ],
    ids=["flipped-claims", "flipped-signature", "another-key", "truncated", "garbage", "alg-none", "hs256",
         "not-a-license", "no-kid"],
)  # fmt: skip
def test_a_license_that_does_not_verify_is_refused_naming_why(
    keys: tuple[Any, Any], tamper: Any, reason: str
) -> None:
    a, b = keys
    token = issue(claims(), a)
    with pytest.raises(LicenseError, match=reason):
        verify(tamper(token, a, b), public(a))


def test_a_key_id_forged_onto_another_keys_signature_does_not_verify(keys: tuple[Any, Any]) -> None:
    a, b = keys
    forged = jwt.encode(
        claims().model_dump(exclude_none=True),
        b,
        algorithm="EdDSA",
        headers={"typ": TOKEN_TYPE, "kid": key_id(a.public_key())},
    )
    with pytest.raises(LicenseError, match="altered after signing, or signed by another key"):
        verify(forged, public(a))


@pytest.mark.parametrize("claim", ["lid", "sub", "tier", "seats", "iat", "exp", "grace"])
def test_a_missing_claim_is_refused_naming_it(keys: tuple[Any, Any], claim: str) -> None:
    a, _ = keys
    payload = claims().model_dump(exclude_none=True)
    del payload[claim]
    token = jwt.encode(
        payload, a, algorithm="EdDSA", headers={"typ": TOKEN_TYPE, "kid": key_id(a.public_key())}
    )
    with pytest.raises(LicenseError, match=f"lacks the claim '{claim}'"):
        verify(token, public(a))


def test_a_malformed_claim_is_named(keys: tuple[Any, Any]) -> None:
    a, _ = keys
    payload = claims().model_dump(exclude_none=True) | {"seats": "fifty"}
    token = jwt.encode(
        payload, a, algorithm="EdDSA", headers={"typ": TOKEN_TYPE, "kid": key_id(a.public_key())}
    )
    with pytest.raises(LicenseError, match="claim 'seats'"):
        verify(token, public(a))


def test_an_expired_license_still_verifies_the_policy_judges_its_dates(keys: tuple[Any, Any]) -> None:
    a, _ = keys
    license = verify(issue(claims(iat=1000, exp=2000, grace=10), a), public(a))
    assert license.grace_until == datetime.fromtimestamp(2010, UTC)


@pytest.mark.parametrize(
    ("text", "seconds"), [("14d", 14 * 86400), ("36h", 36 * 3600), ("90m", 5400), ("30s", 30), ("0d", 0)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["14", "two weeks", "-1d", "1w", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_not_after_a_date_holds_through_that_day() -> None:
    assert parse_not_after("2027-12-31") == datetime(2028, 1, 1, tzinfo=UTC)
    assert parse_not_after("2027-12-31T12:00:00Z") == datetime(2027, 12, 31, 12, tzinfo=UTC)
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_not_after("2027-12-31T12:00:00")
    with pytest.raises(ValueError, match="neither a date"):
        parse_not_after("next year")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("sso=true", ("sso", True)),
        ("reports=false", ("reports", False)),
        ("api_calls=5000", ("api_calls", {"limit": 5000})),
        ("api_calls=unlimited", ("api_calls", {})),
    ],
)
def test_overrides(text: str, parsed: tuple[str, object]) -> None:
    assert parse_override(text) == parsed


@pytest.mark.parametrize("text", ["sso", "=true", "sso=", "sso=maybe", "api_calls=-5"])
def test_bad_overrides(text: str) -> None:
    with pytest.raises(ValueError, match=r"feature=value|must be"):
        parse_override(text)
