"""HTTP plumbing shared by the sidecar's handlers: one JSON error shape, body and input parsing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from tiergate.errors import BadRequestError, TierError

log = structlog.get_logger("tiergate.http")

M = TypeVar("M", bound=BaseModel)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as `{"error": {"code", "message", "field"}}`; a 500 is a bug."""
    try:
        return await handler(request)
    except TierError as exc:
        return json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        return json_response(error_body(code, f"{exc.reason}: {request.method} {request.path}"), exc.status)
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return json_response(error_body("internal", "internal error; see the sidecar's logs"), 500)


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > max_bytes:
        raise BadRequestError(f"body of {request.content_length} bytes exceeds {max_bytes}", field="body")
    try:
        # Read to the end: content.read(n) returns what has arrived so far, which cut valid
        # bodies over 64 KiB short at random ("unexpected end of data").
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadRequestError(f"body exceeds {max_bytes} bytes", field="body") from exc
    if len(raw) > max_bytes:
        raise BadRequestError(f"body exceeds {max_bytes} bytes", field="body")
    if not raw:
        raise BadRequestError("body is empty; expected a JSON object", field="body")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"body is not JSON: {exc}", field="body") from exc
    if not isinstance(value, dict):
        raise BadRequestError(f"body must be a JSON object, got {type(value).__name__}", field="body")
    return value


def validate(model: type[M], raw: object, prefix: str = "") -> M:
    """Validate into `model`; the first problem becomes a 400 naming its field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = prefix + _dotted(err["loc"])
        raise BadRequestError(f"{field or 'body'}: {err['msg']}", field=field or None) from None


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
