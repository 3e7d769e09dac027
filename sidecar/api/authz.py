"""The ingress hook's pure parts: which request is being authorised, and how to answer the proxy.

NGINX `auth_request` sends X-Original-URI / X-Original-Method, Traefik ForwardAuth sends
X-Forwarded-Uri / X-Forwarded-Method, and Envoy `ext_authz` (HTTP service) appends the original
path to the authz path prefix and keeps the original method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from tiergate.models import Decision

AUTHZ_PREFIX = "/v1/authz"


def original_request(headers: Mapping[str, str], method: str, path: str) -> tuple[str, str]:
    """(method, path) of the request the proxy asks about; the query string is not routed on."""
    uri = headers.get("X-Original-URI") or headers.get("X-Forwarded-Uri")
    if uri:
        original_method = headers.get("X-Original-Method") or headers.get("X-Forwarded-Method") or "GET"
        return original_method.upper(), urlsplit(uri).path or "/"
    tail = path[len(AUTHZ_PREFIX) :] if path.startswith(AUTHZ_PREFIX) else path
    return method.upper(), tail or "/"


def authz_answer(decisions: Sequence[Decision], retry_after_s: int | None) -> tuple[int, dict[str, str]]:
    """Status and headers for the proxy: the first deny decides; 429 only for an exhausted quota."""
    for decision in decisions:
        if not decision.allow:
            if decision.reason == "limit_exceeded":
                retry = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
                return 429, retry
            return 403, {}
    headers: dict[str, str] = {}
    if decisions:
        headers["X-Tiergate-Tier"] = str(decisions[0].tier)
        metered = [d.remaining for d in decisions if d.limit is not None]
        remaining = min((r for r in metered if r is not None), default=None) if metered else None
        headers["X-Tiergate-Remaining"] = "unlimited" if remaining is None else str(remaining)
        headers["X-Tiergate-Decision-Id"] = ",".join(d.decision_id for d in decisions)
    return 200, headers
