"""Runs an aiohttp application on its configured addresses: bind first, then start, then say so.

Both servers use it, so both answer a taken port the same way: one line naming the setting,
before any start-up work (the follower, delivery, a snapshot) has begun. Every listener is
bounded (tiergate/bounded.py): header and body read time, idle keep-alive, connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import GracefulExit

from tiergate.bounded import BoundHits, ListenerBounds, Sweeper, capped, read_timeout
from tiergate.errors import ListenError

log = structlog.get_logger("tiergate.serve")


@dataclass(frozen=True)
class Listener:
    """An address to serve on, and the settings that chose it (named in any failure)."""

    host: str
    port: int
    host_setting: str
    port_setting: str
    name: str = "main"  # the `listener` label of tiergate_listener_bounds_total


Track = Callable[[Any, bool], None]  # (a connection, open?): counted against the cap, swept
# A listener's front: given how to make the aiohttp connection it may hand the client to (already
# tracked) and how to track itself, the protocol that first reads each new connection (ADR 39).
Front = Callable[[Callable[[], asyncio.Protocol], Track], asyncio.Protocol]


def serve(
    app: web.Application,
    listeners: Sequence[Listener],
    *,
    process: str,
    bounds: ListenerBounds,
    hits: BoundHits,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    fronts: Mapping[str, Front] | None = None,
) -> None:
    """Bind every listener, start the app, log `listening`, and serve until SIGINT or SIGTERM
    (on the loop `loop_factory` makes, e.g. uvloop's; the standard one by default). `fronts`:
    by listener name, a protocol that reads each connection before aiohttp does."""
    sockets = [(listener.name, sock) for listener in listeners for sock in bind(listener)]
    with (
        asyncio.Runner(loop_factory=loop_factory) as runner,
        contextlib.suppress(GracefulExit, KeyboardInterrupt),
    ):
        runner.run(_serve(app, sockets, process, bounds, hits, fronts or {}))


async def _serve(
    app: web.Application,
    sockets: list[tuple[str, socket.socket]],
    process: str,
    bounds: ListenerBounds,
    hits: BoundHits,
    fronts: Mapping[str, Front],
) -> None:
    runner = await start_bounded(app, sockets, bounds, hits, fronts)
    try:
        for _, sock in sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening", process=process, address=_address(host, port))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class BoundedRunner(web.AppRunner):
    """An AppRunner whose cleanup also stops the bound sweeper."""

    def __init__(self, app: web.Application, bounds: ListenerBounds) -> None:
        super().__init__(app, access_log=None, handle_signals=True, keepalive_timeout=bounds.idle_timeout_s)
        self.sweeper = Sweeper()

    async def cleanup(self) -> None:
        self.sweeper.stop()
        await super().cleanup()


async def start_bounded(
    app: web.Application,
    sockets: Sequence[tuple[str, socket.socket]],
    bounds: ListenerBounds,
    hits: BoundHits,
    fronts: Mapping[str, Front] | None = None,
) -> BoundedRunner:
    """Serve `app` on each (listener name, bound socket) under `bounds`, behind the listener's
    front if `fronts` names one; the caller cleans the runner up."""
    runner = BoundedRunner(app, bounds)
    await runner.setup()
    server = runner.server
    assert server is not None
    connections: dict[RequestHandler, BoundedConnection] = {}
    parsed = server.request_factory

    def request_factory(*args: Any, **kwargs: Any) -> web.BaseRequest:
        _, payload, handler = args[:3]
        connection = connections.get(handler)
        if connection is not None:
            connection.headers_parsed(payload)
        return parsed(*args, **kwargs)

    server.request_factory = request_factory
    for name, sock in sockets:
        front = (fronts or {}).get(name)
        await BoundedSite(runner, sock, name, bounds, hits, connections, front).start()
    runner.sweeper.start("listener-bounds-sweep")
    return runner


class BoundedSite(web.SockSite):
    """A SockSite whose connections are BoundedConnections, capped per listener."""

    __slots__ = ("_bounds", "_connections", "_front", "_hits", "_listener", "_open")

    def __init__(
        self,
        runner: BoundedRunner,
        sock: socket.socket,
        listener: str,
        bounds: ListenerBounds,
        hits: BoundHits,
        connections: dict[RequestHandler, BoundedConnection],
        front: Front | None = None,
    ) -> None:
        super().__init__(runner, sock, backlog=1024)
        self._listener, self._bounds, self._hits = listener, bounds, hits
        self._connections = connections
        self._front = front
        self._open: set[Any] = set()  # BoundedConnections, and fronts not yet handed over

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        runner = self._runner
        assert isinstance(runner, BoundedRunner) and runner.server is not None
        server, sweeper = runner.server, runner.sweeper

        track = self._track(sweeper)

        def bounded() -> BoundedConnection:
            return BoundedConnection(server(), self._listener, self._bounds, self._hits, track)

        front = self._front

        def connect() -> asyncio.BaseProtocol:
            return bounded() if front is None else front(bounded, track)

        factory = capped(self._listener, self._bounds, self._hits, lambda: len(self._open), connect)
        self._server = await asyncio.get_running_loop().create_server(factory, sock=self._sock, backlog=1024)

    def _track(self, sweeper: Sweeper) -> Track:
        def track(connection: Any, is_open: bool) -> None:
            for registry in (self._open, sweeper.connections):
                (registry.add if is_open else registry.discard)(connection)
            if not isinstance(connection, BoundedConnection):
                return
            if is_open:
                self._connections[connection.handler] = connection
            else:
                self._connections.pop(connection.handler, None)

        return track


class BoundedConnection(asyncio.Protocol):
    """aiohttp's connection handler, with the header and body clocks of tiergate/bounded.py."""

    def __init__(
        self,
        handler: RequestHandler,
        listener: str,
        bounds: ListenerBounds,
        hits: BoundHits,
        track: Callable[[BoundedConnection, bool], None],
    ) -> None:
        self.handler = handler
        self._listener, self._bounds, self._hits, self._track = listener, bounds, hits, track
        self._transport: asyncio.Transport | None = None
        self._headers_since: float | None = None  # a request's first byte, until its headers parse
        self._body: StreamReader | None = None  # a body still arriving
        self._body_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._track(self, True)
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._track(self, False)
        self._transport = None
        self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)
        if self._body is not None and not self._body.is_eof():
            return
        self._body = None
        if self._headers_since is None:
            self._headers_since = time.monotonic()

    def eof_received(self) -> None:
        self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def headers_parsed(self, payload: StreamReader) -> None:
        """aiohttp has parsed a request's headers: the body clock (if any) takes over."""
        self._headers_since = None
        if not payload.is_eof():
            self._body, self._body_since = payload, time.monotonic()

    def sweep(self, now: float) -> None:
        bounds = self._bounds
        if self._headers_since is not None and now - self._headers_since > bounds.header_timeout_s:
            self._time_out("header_timeout", "headers", bounds.header_timeout_s, "TIERGATE_HEADER_TIMEOUT_S")
        elif (
            self._body is not None
            and not self._body.is_eof()
            and now - self._body_since > bounds.body_timeout_s
        ):
            self._time_out("body_timeout", "body", bounds.body_timeout_s, "TIERGATE_BODY_TIMEOUT_S")

    def _time_out(self, bound: str, part: str, limit_s: float, setting: str) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._headers_since = self._body = None
        self._hits.hit(self._listener, bound, peer=_peer(transport))
        transport.write(read_timeout(part, limit_s, setting))
        transport.close()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return _address(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else "unknown"


def bind(listener: Listener) -> list[socket.socket]:
    """One bound socket per address the host resolves to; a failure is a ListenError."""
    host, port = listener.host, listener.port
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {listener.host_setting}={host!r}: the host does not resolve ({exc.strerror})"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(_bind_failure(listener, exc)) from None
    return sockets


def _bind_failure(listener: Listener, exc: OSError) -> str:
    where = f"{_address(listener.host, listener.port)}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: port {listener.port} is already in use "
            f"({listener.port_setting}={listener.port}); stop the other process or set "
            f"{listener.port_setting} to a free port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied for port {listener.port} "
            f"({listener.port_setting}); ports below 1024 need privileges"
        )
    return f"cannot listen on {where} ({listener.host_setting}, {listener.port_setting}): {exc.strerror}"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
