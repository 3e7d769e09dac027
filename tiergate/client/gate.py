"""Gating a web route on a feature, without a framework: a decision -> the HTTP answer to a denial.

The aiohttp middleware and the FastAPI/Starlette dependency both render denials here, so an app
gets the same 401/403/429 whichever it uses (and the same as the sidecar's own `/v1/authz`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tiergate.client.calls import UNREACHABLE
from tiergate.models import Decision

# The request's feature and the decision are kept for the handler under this name.
DECISION_KEY = "tiergate_decision"


@dataclass(frozen=True)
class Denial:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def denial(decision: Decision, now: datetime | None = None) -> Denial | None:
    """None when allowed; else 429 over a limit (with Retry-After when known) or for a leased quota
    not available in time (Retry-After: 1), 503 when the sidecar gave no answer (fail_closed), 403
    otherwise."""
    if decision.allow:
        return None
    body = {"allow": False, "reason": decision.reason, "feature": decision.feature, "tier": decision.tier}
    body["decision"] = decision.body()
    if decision.reason == UNREACHABLE:
        return Denial(503, {}, body)
    if decision.reason == "quota_unavailable":  # a leased quota this pod could not cover in time
        return Denial(429, {"Retry-After": "1"}, body)
    if decision.reason != "limit_exceeded":
        return Denial(403, {}, body)
    headers: dict[str, str] = {}
    if decision.valid_until is not None:
        until = datetime.fromisoformat(decision.valid_until)
        wait = (until - (now or datetime.now(UTC))).total_seconds()
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return Denial(429, headers, body)


def no_tenant(header: str) -> Denial:
    message = f"no tenant: the {header} header is missing or empty"
    return Denial(401, {}, {"error": {"code": "missing_tenant", "message": message, "field": header}})
