"""Which request a proxy asks about, and the verdict it gets back: pure, no I/O.

NGINX `auth_request` sends X-Original-URI + X-Original-Method, Traefik ForwardAuth sends
X-Forwarded-Uri + X-Forwarded-Method, and Envoy `ext_authz` (HTTP service) appends the original
path to the authz path prefix and keeps the original method. A call that carries none of these is
a misconfigured proxy: it is refused (400), never answered as if the path were `/`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tiergate.errors import BadRequestError
from tiergate.models import Decision

AUTHZ_PREFIX = "/v1/authz"
CONVENTIONS = (("X-Original-URI", "X-Original-Method"), ("X-Forwarded-Uri", "X-Forwarded-Method"))
# The X-Tiergate-* names the shipped proxy configs overwrite before the upstream (see deploy/nginx).
SIDECAR_HEADERS = frozenset(
    name.lower()
    for name in (
        "X-Tiergate-Tenant",
        "X-Tiergate-Tier",
        "X-Tiergate-Remaining",
        "X-Tiergate-Decision-Id",
        "X-Tiergate-Status",
        "X-Tiergate-Reason",
        "X-Tiergate-Error",
        "X-Tiergate-Request-Id",
        "X-Tiergate-Proxy",
    )
)
MAX_URI = 8192
MAX_BODY_PATH = 200  # a denial's body quotes the path; the client controls it, so it is cut
_METHOD = re.compile(r"^[A-Za-z]{1,32}$")
NO_ORIGINAL_REQUEST = (
    "no original request: expected X-Original-URI + X-Original-Method (NGINX auth_request), "
    "X-Forwarded-Uri + X-Forwarded-Method (Traefik ForwardAuth), or the original path after "
    f"{AUTHZ_PREFIX} (Envoy ext_authz path_prefix)"
)


@dataclass(frozen=True)
class Verdict:
    """What the hook answers: an HTTP status, headers for the proxy, and a JSON body on a denial."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None

    @property
    def allow(self) -> bool:
        return self.status == 200


def original_request(headers: Mapping[str, str], method: str, path: str) -> tuple[str, str]:
    """(method, path) of the request the proxy asks about; the query string is not routed on."""
    for uri_header, method_header in CONVENTIONS:
        uri = headers.get(uri_header)
        if uri is None:
            continue
        if not uri.startswith("/") or len(uri) > MAX_URI:
            shown = uri[:60]
            raise BadRequestError(
                f"{uri_header}: expected an absolute path of at most {MAX_URI} bytes, got {shown!r}",
                field=uri_header,
            )
        original_method = headers.get(method_header, "")
        if not _METHOD.match(original_method):
            raise BadRequestError(
                f"{uri_header} came without a valid {method_header} (got {original_method[:40]!r}); "
                "send both",
                field=method_header,
            )
        return original_method.upper(), urlsplit(uri).path or "/"
    if path.startswith(AUTHZ_PREFIX + "/"):
        return method.upper(), path[len(AUTHZ_PREFIX) :]
    raise BadRequestError(NO_ORIGINAL_REQUEST, field="X-Original-URI")


def reserved_headers(names: Iterable[str], proxy_headers: Iterable[str] = ()) -> list[str]:
    """Client-sent X-Tiergate-* names a proxy cannot overwrite by name: the hook refuses the request
    rather than let them reach the upstream (NGINX passes every client header to the subrequest)."""
    allowed = SIDECAR_HEADERS | {name.lower() for name in proxy_headers}
    return sorted({n for n in names if n.lower().startswith("x-tiergate-") and n.lower() not in allowed})


def decisions_verdict(
    decisions: Sequence[Decision], retry_after_s: int | None, method: str, path: str
) -> Verdict:
    """The first deny decides: 429 for an exhausted quota (with Retry-After), else 403."""
    denied = next((d for d in decisions if not d.allow), None)
    if denied is not None:
        reason = denied.reason
        status = 429 if reason == "limit_exceeded" else 403
        retry = {"Retry-After": str(retry_after_s)} if status == 429 and retry_after_s is not None else {}
        body = denial_body(reason, f"{denied.feature}: {reason}", method, path) | {
            "feature": denied.feature,
            "limit": denied.limit,
            "remaining": denied.remaining,
            "decision": denied,
        }
        return Verdict(status, reason, retry, body)
    headers: dict[str, str] = {}
    if decisions:
        headers["X-Tiergate-Tier"] = str(decisions[0].tier)
        metered = [d.remaining for d in decisions if d.limit is not None and d.remaining is not None]
        headers["X-Tiergate-Remaining"] = str(min(metered)) if metered else "unlimited"
        headers["X-Tiergate-Decision-Id"] = ",".join(d.decision_id for d in decisions)
    return Verdict(200, "ok", headers)


def after_consuming(decision: Decision) -> Decision:
    """A reserve's decision is taken before its unit counts; once the unit is consumed the proxy
    must hear what is left after it (0 on the request that used the last one)."""
    if decision.remaining is None:
        return decision
    return dataclasses.replace(decision, used=decision.used + 1, remaining=max(decision.remaining - 1, 0))


def denial_body(reason: str, message: str, method: str, path: str) -> dict[str, Any]:
    return {
        "allow": False,
        "reason": reason,
        "message": message,
        "method": method,
        "path": path[:MAX_BODY_PATH],
    }


def error_verdict(status: int, code: str, message: str, field_name: str | None) -> Verdict:
    """A hook call that cannot be decided (400, 401): the one JSON error shape, and the reason."""
    return Verdict(status, code, {}, {"error": {"code": code, "message": message, "field": field_name}})


def for_auth_request(verdict: Verdict) -> Verdict:
    """NGINX's auth_request passes only 2xx, 401 and 403 from the subrequest (anything else is a 500
    to the client, body and headers lost). So a denial goes back as 403 carrying the real status,
    reason and body in headers; the shipped config (deploy/nginx) turns them into the client's answer."""
    if verdict.allow:
        return verdict
    headers = verdict.headers | {
        "X-Tiergate-Status": str(verdict.status),
        "X-Tiergate-Reason": verdict.reason,
        "X-Tiergate-Error": header_json(verdict.body or {}),
    }
    return Verdict(403, verdict.reason, headers, verdict.body)


def header_json(body: Mapping[str, Any]) -> str:
    """Compact JSON that is a valid header value: ASCII only (control characters escaped), and
    without the decision's detail, which could outgrow the proxy's header buffer."""
    slim = {key: value for key, value in body.items() if key != "decision"}
    return json.dumps(slim, ensure_ascii=True, separators=(",", ":"))
