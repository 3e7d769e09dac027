"""Signatures of the daemon's outbound webhooks (HMAC-SHA256 over `<timestamp>.<body>`, like Stripe's).

The daemon signs each delivery attempt with `sign`; a receiver checks it with `verify`:

    from tiergate.webhook_signature import verify
    event = verify(request_body_bytes, request.headers["Tiergate-Signature"], secret)

The header is `t=<unix seconds>,v1=<hex digest>`; several `v1=` are accepted (a secret being
rotated). Other languages: compute HMAC-SHA256 with the secret over the bytes
`f"{t}.".encode() + body`, compare in constant time with any `v1`, and refuse a `t` more than
five minutes away from now (a replayed delivery). Receivers must also de-duplicate on the event
`id`: delivery is at least once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from tiergate.errors import TierError

HEADER = "Tiergate-Signature"
TOLERANCE_S = 300


class SignatureError(TierError):
    """The signature header is missing, malformed, stale, or matches no expected digest."""

    code = "bad_signature"
    status = 400


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`, signed now (or at `timestamp`)."""
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={signature(secret, at, body)}"


def verify(
    body: bytes, header: str | None, secret: str, *, tolerance_s: int = TOLERANCE_S, now: float | None = None
) -> dict[str, Any]:
    """The event, once its signature is checked; raises SignatureError saying what is wrong."""
    if not header:
        raise SignatureError(f"no {HEADER} header")
    parts = [part.partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in parts if key.strip() == "t"]
    digests = [value.strip() for key, _, value in parts if key.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not digests:
        raise SignatureError(f"{HEADER} must look like t=<unix seconds>,v1=<hex>; got {header[:100]!r}")
    at = int(stamps[0])
    if abs((time.time() if now is None else now) - at) > tolerance_s:
        raise SignatureError(f"{HEADER} timestamp {at} is more than {tolerance_s}s from now: a replay?")
    expected = signature(secret, at, body)
    if not any(hmac.compare_digest(expected, digest) for digest in digests):
        raise SignatureError("no v1 signature matches the body with this secret")
    event: dict[str, Any] = json.loads(body)
    return event
