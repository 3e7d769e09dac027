"""HTTP plumbing for the daemon's routes: one JSON error shape, the feed's bearer token, app keys."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from tiergate.errors import TierError

log = structlog.get_logger("tiergate.daemon.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class UnauthorizedError(TierError):
    code = "unauthorized"
    status = 401


class FeedGapError(TierError):
    """The follower's position is older than the retained change log: it must re-snapshot."""

    code = "feed_gap"
    status = 410


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as `{"error": {"code", "message", "field"}}`; a 500 is a bug."""
    try:
        return await handler(request)
    except TierError as exc:
        if exc.status >= 500:
            log.warning("request_failed", path=request.path, code=exc.code, error=exc.message)
        return json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        return json_response(error_body(code, f"{exc.reason}: {request.method} {request.path}"), exc.status)
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return json_response(error_body("internal", "internal error; see the daemon's logs"), 500)


def require_bearer(request: web.Request, token: str) -> None:
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # compare_digest: the time taken must not tell an attacker how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <TIERGATE_FEED_TOKEN>)")
