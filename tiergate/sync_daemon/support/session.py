"""Console sessions without server state: a signed cookie naming the role and the actor, and the
CSRF token every change carries.

The cookie is `payload.signature`, signed with HMAC-SHA256 under a key derived from the console
token the person signed in with: every daemon behind the Service accepts it, and rotating that
token away ends its sessions. The CSRF token is another HMAC of the same session, sent in each
form (the cookie is also SameSite=Strict and HttpOnly).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from tiergate.web import bearer_tokens

Role = Literal["reader", "operator"]
COOKIE = "tiergate_console"
SESSION_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    role: Role
    actor: str
    nonce: str
    expires: int
    key: bytes

    @property
    def csrf(self) -> str:
        return _sign(self.key, f"csrf:{self.nonce}")

    @property
    def may_change(self) -> bool:
        return self.role == "operator"

    def cookie(self) -> str:
        payload = _b64(json.dumps({"r": self.role, "a": self.actor, "n": self.nonce, "e": self.expires}))
        return f"{payload}.{_sign(self.key, payload)}"


def keys(reader_tokens: str, operator_tokens: str) -> list[tuple[Role, bytes]]:
    """Each configured console token's signing key, with the role it grants."""
    found: list[tuple[Role, bytes]] = [("operator", _key(t)) for t in bearer_tokens(operator_tokens)]
    return found + [("reader", _key(t)) for t in bearer_tokens(reader_tokens)]


def sign_in(token: str, actor: str, reader_tokens: str, operator_tokens: str, now: float) -> Session | None:
    """A new session for the person holding `token`, or None when it is no console token."""
    given = _key(token)
    role: Role | None = None
    for granted, key in keys(reader_tokens, operator_tokens):
        if hmac.compare_digest(given, key) and role is None:
            role = granted
    if role is None:
        return None
    return Session(role, actor, secrets.token_urlsafe(16), int(now) + SESSION_S, given)


def read_cookie(value: str, reader_tokens: str, operator_tokens: str, now: float) -> Session | None:
    """The session a cookie carries, if one of today's tokens signed it and it has not expired."""
    payload, _, signature = value.partition(".")
    for role, key in keys(reader_tokens, operator_tokens):
        if hmac.compare_digest(signature.encode(), _sign(key, payload).encode()):
            try:
                fields = json.loads(base64.urlsafe_b64decode(payload.encode() + b"=="))
            except ValueError:
                return None
            if fields.get("r") != role or int(fields.get("e", 0)) < now:
                return None
            return Session(role, str(fields["a"]), str(fields["n"]), int(fields["e"]), key)
    return None


def check_csrf(session: Session, given: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), given.encode())


def now() -> float:
    return time.time()


def _key(token: str) -> bytes:
    return hashlib.sha256(b"tiergate-console:" + token.encode()).digest()


def _sign(key: bytes, text: str) -> str:
    return _b64(hmac.new(key, text.encode(), hashlib.sha256).digest())


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
