"""The main port's front: plain `GET /v1/check` requests on the check listener's raw protocol, any
other request on aiohttp, on one port (docs/adr/0039-one-port-at-the-floor.md).

Each new connection on the main listener starts here. A request head this front fully understands
(an HTTP/1.1 `GET /v1/check`, ASCII, within aiohttp's line limit, with no body, `Expect` or
`Upgrade`) that has arrived whole is answered by `CheckProtocol`, as on `TIERGATE_CHECK_PORT`: the
same answers as aiohttp's handler (ADR 23's differential tests hold the two equal). Anything else,
a request still arriving included, hands the connection over to aiohttp for good: once the answers
already queued are written, the transport gets the listener's `BoundedConnection` and the bytes
not yet answered. So every bound of ADR 33 is the main port's own: the connection cap counts the
front (it is made inside the same capped factory), a slow request is timed by aiohttp's header
and body clocks with their 408, and every refusal is aiohttp's. An idle connection still on the
front closes after TIERGATE_IDLE_TIMEOUT_S, as aiohttp's keep-alive does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from tiergate.bounded import BoundHits, ListenerBounds
from tiergate.serve import Front, Track
from tiergate.sidecar.api.check_listener import MAX_TARGET_BYTES, CheckProtocol, Decide

# Header names after which a request is not a plain check: a body, or a changed protocol.
_NOT_PLAIN = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:", b"\r\nupgrade:", b"\r\nexpect:")
_HEAD_END = b"\r\n\r\n"


def plain_check(head: bytes) -> bool:
    """A request head (without its blank line) the raw path answers exactly as aiohttp would."""
    if len(head) > MAX_TARGET_BYTES or not head.isascii():
        return False
    line = head.partition(b"\r\n")[0]
    if not line.startswith((b"GET /v1/check?", b"GET /v1/check ")) or not line.endswith(b" HTTP/1.1"):
        return False
    lowered = head.lower()
    return not any(name in lowered for name in _NOT_PLAIN)


class FrontProtocol(asyncio.Protocol):
    """One connection of the main port, until (if ever) it is handed over to aiohttp."""

    def __init__(
        self,
        decide: Decide,
        bounds: ListenerBounds,
        hits: BoundHits,
        lend: Callable[[], asyncio.Protocol],
        track: Track,
    ) -> None:
        self._decide, self._bounds, self._hits = decide, bounds, hits
        self._check: CheckProtocol | None = None  # made on the first plain check
        self._lend, self._track = lend, track
        self._idle_timeout_s = bounds.idle_timeout_s
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._handing_over = False
        self._eof = False  # the client shut its side with bytes still to hand over
        self._last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._track(self, True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._track(self, False)
        if self._check is not None:
            self._check.connection_lost(exc)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._last_active = time.monotonic()
        self._buffer += data
        if self._handing_over or (self._check is not None and self._check.closing):
            return
        buffer = self._buffer
        while buffer:
            end = buffer.find(_HEAD_END)
            if end < 0 or not plain_check(bytes(buffer[:end])):
                self._hand_over()
                return
            request = bytes(buffer[: end + len(_HEAD_END)])
            del buffer[: end + len(_HEAD_END)]
            check = self._checker()
            check.data_received(request)
            if check.closing:
                buffer.clear()
                return

    def eof_received(self) -> bool | None:
        if not (self._handing_over or self._buffer):
            return None  # nothing pending: close once the answers are written
        self._eof = True
        self._hand_over()
        return True  # aiohttp reads the rest, then the end of it

    def sweep(self, now: float) -> None:
        """Close a connection idle on the front longer than TIERGATE_IDLE_TIMEOUT_S."""
        transport = self._transport
        if transport is None or self._handing_over or (self._check is not None and self._check.answering):
            return
        if now - self._last_active > self._idle_timeout_s:
            transport.close()

    def _checker(self) -> CheckProtocol:
        if self._check is None:
            self._check = CheckProtocol(self._decide, self._bounds, self._hits, set())
            assert self._transport is not None
            self._check.connection_made(self._transport)
        return self._check

    def _hand_over(self) -> None:
        if self._handing_over:
            return
        self._handing_over = True
        if self._transport is not None:
            self._transport.pause_reading()
        if self._check is None:
            self._lend_now()
        else:
            self._check.when_answered(self._lend_now)

    def _lend_now(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._track(self, False)  # the BoundedConnection counts from now on
        self._transport = None
        connection = self._lend()
        transport.set_protocol(connection)
        connection.connection_made(transport)
        pending, self._buffer = bytes(self._buffer), bytearray()
        if pending:
            connection.data_received(pending)
        if self._eof:
            connection.eof_received()
        else:
            transport.resume_reading()


def front(decide: Callable[[], Decide], bounds: ListenerBounds, hits: BoundHits) -> Front:
    """The main listener's front (tiergate.serve.Front); `decide` gives the decision service's
    `decide_json` once the app has started."""

    def make(lend: Callable[[], asyncio.Protocol], track: Track) -> asyncio.Protocol:
        return FrontProtocol(decide(), bounds, hits, lend, track)

    return make
