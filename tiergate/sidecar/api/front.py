"""The main port's front: plain `GET /v1/check` requests on the raw protocol, the rest to aiohttp.

Every connection to TIERGATE_SIDECAR_PORT starts on `FrontProtocol`, the check listener's
protocol (tiergate/sidecar/api/check_listener.py) with its own framing: it reads one request head
at a time and answers it there when it is a `GET /v1/check` that parses cleanly, with no body and
no upgrade. A request that is anything else (another route, a body, a malformed or over-long
head) lends the connection, from that request's first byte, to aiohttp's own request handler once
the answers queued before it are written; aiohttp serves it and what follows, as it would without
the front, until a check arrives after whole requests it has answered: then the front takes the
connection back (tiergate/sidecar/api/front_relay.py). So the answers, limits and errors of every
other route and every odd request are aiohttp's own (docs/adr/0039-one-port-at-the-floor.md).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import httptools
from aiohttp import web

from tiergate.sidecar.api.check_listener import (
    MAX_HEADER_BLOCK_BYTES,
    MAX_TARGET_BYTES,
    CheckProtocol,
    Decide,
    RequestRefused,
    sweep,
)
from tiergate.sidecar.api.front_relay import Boundaries, Relay, idle
from tiergate.sidecar.state import DECISIONS, SETTINGS

FAST_PREFIXES = (b"GET /v1/check?", b"GET /v1/check ")
MAX_HEAD_BYTES = MAX_TARGET_BYTES + MAX_HEADER_BLOCK_BYTES + 64  # past this, aiohttp refuses it
Fallback = Callable[[], asyncio.Protocol]


def fast_prefix(buffer: bytes | bytearray) -> bool | None:
    """True when the buffered request is a `GET /v1/check`, False when it is not, None when too
    few bytes have arrived to tell."""
    for prefix in FAST_PREFIXES:
        if buffer[: len(prefix)] == prefix:
            return True
    if len(buffer) < len(FAST_PREFIXES[0]) and FAST_PREFIXES[0].startswith(bytes(buffer)):
        return None
    return False


def head_end(buffer: bytes | bytearray) -> int | None:
    """The offset just past the request head (the blank line), or None if it has not arrived."""
    crlf, lf = buffer.find(b"\r\n\r\n"), buffer.find(b"\n\n")
    ends = [at + 4 for at in (crlf,) if at >= 0] + [at + 2 for at in (lf,) if at >= 0]
    return min(ends) if ends else None


class FrontProtocol(CheckProtocol):
    """One connection to the main port: checks on the raw path until a request that is not one."""

    def __init__(
        self,
        decide: Decide,
        request_timeout_s: float,
        connections: set[CheckProtocol],
        fallback: Fallback,
    ) -> None:
        super().__init__(decide, request_timeout_s, connections)
        self._fallback = fallback
        self._buffer = bytearray()  # from the first byte of the request being read
        self._fed = 0  # bytes of the buffer the parser has seen
        self._completed = False  # the head fed was a whole request, answered
        self._handing_over = False
        self._upgrade = False  # the request asks for a protocol upgrade
        self._handler: asyncio.Protocol | None = None  # aiohttp's, while it serves the connection
        self._relay: Relay | None = None
        self._boundaries = Boundaries()

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            if not self._may_take_back(self._handler, data):
                self._boundaries.feed(data)
                self._handler.data_received(data)
                return
            self._take_back()
        if self._last_request:
            return
        self._buffer += data
        self._last_active = time.monotonic()
        if not self._handing_over:
            self._advance()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; queued answers are dropped with it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handler is not None:
            self._handler.connection_lost(exc)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def sweep(self, now: float) -> None:
        if self._handler is None:  # else aiohttp's own timers apply
            super().sweep(now)

    def _advance(self) -> None:
        """Answer every whole check head buffered; hand over at the first request that is not one."""
        while self._buffer and not self._last_request:
            fast = fast_prefix(self._buffer)
            if fast is None:
                return
            end = head_end(self._buffer)
            if not fast or not self._feed(end):
                self._hand_over()
                return
            if end is None:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._hand_over()
                return
            if not self._completed:  # a body follows the head (or the head was refused)
                self._hand_over()
                return
            del self._buffer[:end]
            self._fed, self._completed = 0, False

    def _feed(self, end: int | None) -> bool:
        """Parse the buffered head up to `end` (all of it when None); False if it cannot be
        answered here."""
        stop = len(self._buffer) if end is None else end
        try:
            self._parser.feed_data(bytes(self._buffer[self._fed : stop]))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, RequestRefused):
            return False
        self._fed = stop
        return True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._upgrade = False

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if name.lower() == b"upgrade":
            self._upgrade = True

    def on_message_complete(self) -> None:
        refused, self._refused = self._refused, None
        if refused is not None or self._upgrade:  # aiohttp answers these, as without the front
            return
        self._request_started = None
        self._completed = True
        keep_alive = self._parser.should_keep_alive()
        self._queue(self._answer(bytes(self._target), keep_alive), close_after=not keep_alive)

    def _refuse(self, refused: RequestRefused) -> None:
        """The sweeper's 408 for a head that does not arrive: aiohttp's bound applies from here."""
        if refused.status == 408:
            super()._refuse(refused)
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        self._handing_over = True
        self._stop_reading()
        self._request_started = None
        previous = self._tail
        if previous is None or previous.done():
            self._switch()
        else:
            previous.add_done_callback(lambda _: self._switch())

    def _switch(self) -> None:
        """Lend the connection, and the bytes from the current request on, to aiohttp's handler."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._relay, self._boundaries = Relay(transport), Boundaries()
        handler = self._handler = self._fallback()
        handler.connection_made(self._relay)
        data, self._buffer = bytes(self._buffer), bytearray()
        self._parser = httptools.HttpRequestParser(self)  # a fresh one for when the connection comes back
        self._fed, self._completed, self._handing_over = 0, False, False
        self._reading = True
        transport.resume_reading()
        if data:
            self._boundaries.feed(data)
            handler.data_received(data)

    def _may_take_back(self, handler: asyncio.Protocol, data: bytes) -> bool:
        """`data` starts a check, after whole requests that aiohttp has answered."""
        boundaries = self._boundaries
        return boundaries.between and not boundaries.broken and fast_prefix(data) is True and idle(handler)

    def _take_back(self) -> None:
        """aiohttp's handler lets go: it is told the connection is gone, through a detached relay."""
        handler, relay = self._handler, self._relay
        self._handler = self._relay = None
        if relay is not None:
            relay.detach()
        if handler is not None:
            handler.connection_lost(None)
        if self._transport is not None:
            self._transport.resume_reading()


class FrontSite(web.BaseSite):
    """The main port's socket served through `FrontProtocol`, with aiohttp's handler behind it."""

    __slots__ = ("_connections", "_sock", "_sweeper")

    def __init__(self, runner: web.AppRunner, sock: socket.socket) -> None:
        super().__init__(runner)
        self._sock = sock
        self._connections: set[CheckProtocol] = set()
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        server = runner.server
        assert server is not None and isinstance(runner, web.AppRunner)
        app = runner.app
        decide = app[DECISIONS].decide_json
        timeout = app[SETTINGS].check_request_timeout_s
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FrontProtocol(decide, timeout, self._connections, server),
            sock=self._sock,
            backlog=self._backlog,
        )
        self._sweeper = loop.create_task(sweep(self._connections), name="front-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._connections):
            connection.close()
        await super().stop()
