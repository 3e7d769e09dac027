"""HTTP plumbing of both servers: one JSON error shape, bounded body reading, validation, bearer tokens.

Handlers raise a `TierError` (or let aiohttp raise an `HTTPException`); `error_middleware` turns it
into `{"error": {"code", "message", "field"}}` with the class's status. Anything else is a bug:
logged with its traceback and answered 500 without details.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ValidationError

from tiergate import exact_json
from tiergate.errors import BadRequestError, TierError, UnauthorizedError, dotted_location
from tiergate.exact_json import number_text

log = structlog.get_logger("tiergate.http")

M = TypeVar("M", bound=BaseModel)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=number_text),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_middleware(process: str) -> Middleware:
    """The middleware of one server; `process` ("sidecar", "daemon") names whose logs to read."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            check_headers(request)
            return await handler(request)
        except Exception as exc:
            return error_response(request, exc, process)

    return middleware


def error_response(request: web.Request, exc: Exception, process: str) -> web.StreamResponse:
    """What a handler's exception answers (the middleware's work, for handlers that run without
    one): a TierError its JSON and status, an aiohttp 4xx/5xx the same shape, anything else a
    logged 500. A redirect (an HTTPException below 400) is raised again."""
    if isinstance(exc, TierError):
        if exc.status >= 500:
            log.warning("request_failed", path=request.path, code=exc.code, error=exc.message)
        return json_response(exc.to_json(), status=exc.status)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = (exc.reason or "error").lower().replace(" ", "_")
        body = error_body(code, f"{exc.reason}: {request.method} {request.path}")
        allow = exc.headers.get("Allow")  # a 405 says which methods the route takes
        return json_response(body, exc.status, {"Allow": allow} if allow is not None else None)
    if isinstance(exc, ConnectionResetError):  # the client (or a listener bound) closed: no answer goes out
        log.info("client_gone", method=request.method, path=request.path)
        return json_response(
            error_body("client_gone", "the connection closed before the request was read"), 400
        )
    log.error("unhandled_error", method=request.method, path=request.path, exc_info=exc)
    return json_response(error_body("internal", f"internal error; see the {process}'s logs"), 500)


async def read_json_object(request: web.Request, max_bytes: int, *, exact: bool = False) -> dict[str, Any]:
    """The body as a JSON object; `exact`: numbers with a fraction as `Decimal`s (tiergate/exact_json.py)."""
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
        value = exact_json.loads(raw) if exact else orjson.loads(raw)
    except (orjson.JSONDecodeError, exact_json.ExactJsonError) as exc:
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
        field = prefix + dotted_location(err["loc"])
        raise BadRequestError(f"{field or 'body'}: {err['msg']}", field=field or None) from None


def check_headers(request: web.Request) -> None:
    """Header bytes that are not UTF-8 (kept by aiohttp as surrogates) are the client's mistake: a
    400 naming the header, before a handler or a log line trips over them."""
    for name, value in request.headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise BadRequestError(f"header {name} is not valid UTF-8", field=name) from None
    if not request.raw_path.isascii():
        try:
            request.raw_path.encode()
        except UnicodeEncodeError:
            raise BadRequestError("the request target is not valid UTF-8", field="path") from None


def query_params(request: web.Request) -> dict[str, str]:
    """One value per query parameter; a parameter given twice is a 400 (which one would count?)."""
    return target_query(request.raw_path)


def target_query(target: str) -> dict[str, str]:
    """A request target's query, percent-decoded, one value per name. Blank values are kept; a
    name given twice, or an escape that is not UTF-8 (two different ids must not decode to the
    same replacement character), is a 400 naming it."""
    raw = target.partition("?")[2].partition("#")[0]
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise BadRequestError("the query is not valid UTF-8 once decoded", field="query") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        name = next(k for k, _ in pairs if counts[k] > 1)
        values = [v for k, v in pairs if k == name]
        raise BadRequestError(
            f"query parameter {name!r} is given {len(values)} times ({values!r}); give it once",
            field=name,
        )
    return params


def bearer_tokens(setting: str) -> list[str]:
    """The tokens a token setting holds: comma-separated, so that a rotation lists the new one
    and the old one. A server accepts each of them; a client sends the first."""
    return [token.strip() for token in setting.split(",") if token.strip()]


def require_bearer(request: web.Request, tokens: str, setting: str = "TIERGATE_FEED_TOKEN") -> None:
    """`tokens` is the setting's value (see bearer_tokens); `setting` is named in the 401."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    given = value.strip().encode()
    # compare_digest against every token, no early exit: the time taken must not tell an attacker
    # how much of a token matched, nor which.
    matched = False
    for token in bearer_tokens(tokens):
        matched |= hmac.compare_digest(given, token.encode())
    if scheme.lower() != "bearer" or not matched:
        raise UnauthorizedError(f"missing or wrong bearer token (Authorization: Bearer <{setting}>)")
