"""How the main port's front lends a connection to aiohttp and takes it back between requests.

aiohttp's request handler is given a `Relay` instead of the socket's transport: it writes, closes
and pauses through it while it serves, and once it is detached nothing it does reaches the socket.
`Boundaries` follows the bytes relayed to it, so the front knows when they end between two
requests; together with `idle` (the handler's loop waits for its next request, so its last answer
is written) that is when the front may answer the connection's next check itself
(docs/adr/0039-one-port-at-the-floor.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools


class Relay(asyncio.Transport):
    """The connection's transport as aiohttp's handler sees it; inert once detached."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self.attached = True

    def detach(self) -> None:
        self.attached = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return not self.attached or self._transport.is_closing()

    def close(self) -> None:
        if self.attached:
            self._transport.close()

    def abort(self) -> None:
        if self.attached:
            self._transport.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.attached:
            self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        if self.attached:
            self._transport.writelines(list_of_data)

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        if self.attached:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.attached:
            self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class Boundaries:
    """Whether the bytes relayed so far end between two requests (never again after bytes that do
    not parse, or an upgrade: then aiohttp keeps the connection)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.between = True
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.broken = True

    def on_message_begin(self) -> None:
        self.between = False

    def on_message_complete(self) -> None:
        self.between = True


def idle(handler: asyncio.Protocol) -> bool:
    """aiohttp's handler waits for its next request: nothing queued, its last answer written.
    (Its private state: tests/integration/sidecar/test_front.py fails if that changes.)"""
    return getattr(handler, "_waiter", None) is not None and not getattr(handler, "_messages", True)
