"""The check listener (TIERGATE_CHECK_PORT): `GET /v1/check` on a raw HTTP/1.1 protocol.

The main port runs aiohttp, whose request and response objects cost ~30 µs of CPU a request on
the reference machine: more than a materialised decision (3 µs). This listener parses requests
with httptools (llhttp, the parser aiohttp itself uses) straight into the decision service's
`decide_json` and writes the rendered bytes, so an app that checks often pays close to the
floor of a Python HTTP server (docs/adr/0023-a-check-listener-on-a-raw-protocol.md).

It serves exactly one route. The answers are the main port's, byte for byte apart from the
decision id (tests/integration/sidecar/test_check_listener.py holds the two to that), and so are
the rules: a parameter given twice, an empty or over-long tenant or feature, a quantity outside
1..MAX, a request target or header that is not UTF-8 are 400s naming the field. What a client
controls is bounded: the request target (8 KiB), each header (8 KiB), the header block (64 KiB,
100 headers), a body (a check has none: 400), the time to send a request (TIERGATE_CHECK_REQUEST_TIMEOUT_S:
408, then the connection is closed), pipelined requests in flight on one connection (reading
pauses past 32), idle keep-alive connections (closed after TIERGATE_IDLE_TIMEOUT_S) and open
connections (TIERGATE_MAX_CONNECTIONS: one more is a 503, see tiergate/bounded.py). Anything else
is a 404 or 405 in JSON that points at the main port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson
import structlog
from aiohttp import web

from tiergate.bounded import BOUND_HITS, BoundHits, ListenerBounds, capped
from tiergate.errors import BadRequestError, SettingsError, TierError
from tiergate.sidecar.api.query import check_query
from tiergate.sidecar.state import DECISIONS, SETTINGS
from tiergate.web import error_body, target_query

log = structlog.get_logger("tiergate.check_listener")

CHECK_PATH = b"/v1/check"
MAX_TARGET_BYTES = 8190  # aiohttp's max_line_size
MAX_HEADER_BYTES = 8190  # one header's name and value, aiohttp's max_field_size
MAX_HEADER_BLOCK_BYTES = 65536
MAX_HEADERS = 100
MAX_IN_FLIGHT = 32  # pipelined requests of one connection before reading pauses
SWEEP_EVERY_S = 1.0
LISTENER = "check"  # the `listener` label of tiergate_listener_bounds_total

CHECK_LISTENER_PORT = web.AppKey("check_listener_port", int)
Decide = Callable[[str, str, int], Coroutine[Any, Any, bytes]]


class RequestRefused(Exception):
    """What a request broke, answered with `status` and the connection closed after it."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field

    def body(self) -> bytes:
        return orjson.dumps(error_body(self.code, str(self), self.field))


def response(status: int, body: bytes, *, keep_alive: bool, extra: bytes = b"") -> bytes:
    """One HTTP/1.1 response with a JSON body."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
            b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            extra,
            b"" if keep_alive else b"Connection: close\r\n",
            b"\r\n",
            body,
        )
    )


def check_arguments(target: bytes) -> tuple[str, str, int]:
    """(tenant, feature, quantity) of a `/v1/check?...` request target, or a BadRequestError,
    under the rules GET /v1/check applies on the main port (`target_query`, `check_query`)."""
    try:
        text = target.decode()
    except UnicodeDecodeError:
        raise BadRequestError("the request target is not valid UTF-8", field="path") from None
    return check_query(target_query(text))


class CheckProtocol(asyncio.Protocol):
    """One client connection: requests are parsed as bytes arrive and answered in order."""

    def __init__(
        self, decide: Decide, bounds: ListenerBounds, hits: BoundHits, connections: set[CheckProtocol]
    ) -> None:
        self._decide = decide
        self._request_timeout_s = bounds.header_timeout_s
        self._idle_timeout_s = bounds.idle_timeout_s
        self._hits = hits
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._target = bytearray()
        self._header_bytes = 0
        self._headers = 0
        self._refused: RequestRefused | None = None  # by a header, the route or the body
        self._request_started: float | None = None  # while a request is being received
        self._last_active = time.monotonic()
        self._tail: asyncio.Task[None] | None = None  # the newest answer in progress
        self._in_flight = 0
        self._reading = True
        self._last_request = False  # no request after this one is read (close, or a refusal)

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._last_request:
            return
        self._last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An `Upgrade` or a CONNECT: the request is answered as the main port answers it (not
            # upgraded), and what follows is not HTTP/1.1 any more: close after the answer.
            if self._request_started is None:
                self._queue(_ready(b""), close_after=True)
            else:
                self._refuse(RequestRefused(400, "bad_request", "protocol upgrades are not served here"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRefused):
                self._refuse(cause)
            else:
                self._refuse(RequestRefused(400, "bad_request", f"malformed HTTP request: {exc}"))
        except RequestRefused as refused:
            self._refuse(refused)

    def sweep(self, now: float) -> None:
        """Close a connection that takes too long to send a request, or idles too long."""
        if self._transport is None or self._last_request:
            return
        started = self._request_started
        if started is not None and now - started > self._request_timeout_s:
            limit = self._request_timeout_s
            self._hits.hit(LISTENER, "header_timeout")
            self._refuse(
                RequestRefused(408, "request_timeout", f"the request took over {limit:g} s to arrive")
            )
        elif started is None and self._in_flight == 0 and now - self._last_active > self._idle_timeout_s:
            self.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    @property
    def closing(self) -> bool:
        """No request after the last one read is answered (a `Connection: close`, a refusal)."""
        return self._last_request

    @property
    def answering(self) -> bool:
        return self._in_flight > 0

    def when_answered(self, callback: Callable[[], object]) -> None:
        """Call `callback` once every answer queued so far is written (now, when there is none)."""
        tail = self._tail
        if tail is None or tail.done():
            callback()
        else:
            tail.add_done_callback(lambda _: callback())

    # -- httptools' callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request_started = time.monotonic()
        self._target.clear()
        self._header_bytes = self._headers = 0
        self._refused = None

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_TARGET_BYTES:
            raise RequestRefused(414, "uri_too_long", f"the request target is over {MAX_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._headers += 1
        self._header_bytes += size
        if (
            size > MAX_HEADER_BYTES
            or self._header_bytes > MAX_HEADER_BLOCK_BYTES
            or self._headers > MAX_HEADERS
        ):
            raise RequestRefused(
                431,
                "request_header_fields_too_large",
                f"headers are limited to {MAX_HEADERS}, {MAX_HEADER_BYTES} bytes each, "
                f"{MAX_HEADER_BLOCK_BYTES} in all",
            )
        if self._refused is None:
            self._refused = _header_problem(name, value)

    def on_headers_complete(self) -> None:
        self._target[:] = origin_form(bytes(self._target))
        if self._refused is None:
            self._refused = _route_problem(bytes(self._target), self._parser.get_method())

    def on_body(self, body: bytes) -> None:
        self._refused = RequestRefused(400, "bad_request", "a check has no body", field="body")

    def on_message_complete(self) -> None:
        self._request_started = None
        refused, self._refused = self._refused, None
        # After a body the connection ends: a client that sends one may not frame the next request as we would.
        keep_alive = self._parser.should_keep_alive() and not (
            refused is not None and refused.field == "body"
        )
        if refused is not None:
            self._queue(_ready(_refusal(refused, keep_alive)), close_after=not keep_alive)
        else:
            self._queue(self._answer(bytes(self._target), keep_alive), close_after=not keep_alive)

    # -- answers -----------------------------------------------------------------------------

    def _queue(self, answer: Coroutine[Any, Any, bytes], *, close_after: bool) -> None:
        """Compute `answer` now, write it after the answers queued before it."""
        if close_after:
            self._stop_reading()
            self._last_request = True
        previous = self._tail
        self._in_flight += 1
        self._tail = asyncio.get_running_loop().create_task(self._write_after(previous, answer, close_after))
        if self._in_flight >= MAX_IN_FLIGHT:
            self._stop_reading()

    async def _write_after(
        self, previous: asyncio.Task[None] | None, answer: Coroutine[Any, Any, bytes], close_after: bool
    ) -> None:
        try:
            data = await answer
            if previous is not None and not previous.done():
                await asyncio.shield(previous)
        finally:
            self._in_flight -= 1
        if self._transport is None:
            return
        self._transport.write(data)
        if close_after:
            self.close()
        elif not self._reading and not self._last_request and self._in_flight < MAX_IN_FLIGHT:
            self._transport.resume_reading()
            self._reading = True

    async def _answer(self, target: bytes, keep_alive: bool) -> bytes:
        try:
            tenant, feature, quantity = check_arguments(target)
            body = await self._decide(tenant, feature, quantity)
        except TierError as exc:
            return response(exc.status, orjson.dumps(exc.to_json()), keep_alive=keep_alive)
        except Exception as exc:  # the main port's handler logs and answers these the same way
            log.error("unhandled_error", path="/v1/check", listener="check", exc_info=exc)
            failed = orjson.dumps(error_body("internal", "internal error; see the sidecar's logs"))
            return response(500, failed, keep_alive=keep_alive)
        return response(200, body, keep_alive=keep_alive)

    def _refuse(self, refused: RequestRefused) -> None:
        """A request that cannot be read to its end: answer after what is queued, then close."""
        if not self._last_request:
            self._queue(_ready(_refusal(refused, keep_alive=False)), close_after=True)

    def _stop_reading(self) -> None:
        if self._reading and self._transport is not None:
            self._transport.pause_reading()
            self._reading = False


def origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-form target (`http://host/v1/check?...`), as the main
    port routes it; any other target unchanged."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target
    start = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    path = rest[start:]
    return path if path.startswith(b"/") else b"/" + path


async def _ready(data: bytes) -> bytes:
    return data


def _refusal(refused: RequestRefused, keep_alive: bool) -> bytes:
    extra = b"Allow: GET\r\n" if refused.status == 405 else b""
    return response(refused.status, refused.body(), keep_alive=keep_alive, extra=extra)


def _route_problem(target: bytes, method: bytes) -> RequestRefused | None:
    path = target.partition(b"?")[0]
    if path != CHECK_PATH:
        shown = path.decode(errors="replace")[:200]
        return RequestRefused(
            404,
            "not_found",
            f"{shown} is not served on the check listener (only GET /v1/check); use the main port",
        )
    if method != b"GET":
        shown = method.decode(errors="replace")
        return RequestRefused(
            405, "method_not_allowed", f"{shown} /v1/check: the check listener serves GET only"
        )
    return None


def _header_problem(name: bytes, value: bytes) -> RequestRefused | None:
    try:
        name.decode()
        value.decode()
    except UnicodeDecodeError:
        shown = name.decode(errors="replace")[:100]
        return RequestRefused(400, "bad_request", f"header {shown} is not valid UTF-8", field=shown)
    return None


async def sweep(connections: set[CheckProtocol]) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        now = time.monotonic()
        for connection in list(connections):
            connection.sweep(now)


async def check_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve GET /v1/check on TIERGATE_SIDECAR_HOST:TIERGATE_CHECK_PORT until the app stops
    (after the decision service's context)."""
    settings = app[SETTINGS]
    decisions = app[DECISIONS]
    connections: set[CheckProtocol] = set()
    loop = asyncio.get_running_loop()
    # A check has no body: the request timeout is the whole request's.
    bounds = dataclasses.replace(settings.listener_bounds, header_timeout_s=settings.check_request_timeout_s)
    hits = app[BOUND_HITS]

    def connect() -> CheckProtocol:
        return CheckProtocol(decisions.decide_json, bounds, hits, connections)

    try:
        server = await loop.create_server(
            capped(LISTENER, bounds, hits, lambda: len(connections), connect),
            settings.sidecar_host,
            settings.check_port,
            reuse_address=True,
        )
    except OSError as exc:
        where = f"{settings.sidecar_host}:{settings.check_port}"
        raise SettingsError(
            f"cannot listen on TIERGATE_SIDECAR_HOST/TIERGATE_CHECK_PORT {where}: {exc}"
        ) from exc
    app[CHECK_LISTENER_PORT] = server.sockets[0].getsockname()[1]
    sweeper = loop.create_task(sweep(connections), name="check-listener-sweep")
    log.info("check_listener", host=settings.sidecar_host, port=app[CHECK_LISTENER_PORT])
    try:
        yield
    finally:
        sweeper.cancel()
        server.close()
        for connection in list(connections):
            connection.close()
        await server.wait_closed()
