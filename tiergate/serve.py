"""Runs an aiohttp application on its configured address: bind first, then start, then say so.

Both servers use it, so both answer a taken port the same way: one line naming the setting,
before any start-up work (the follower, delivery, a snapshot) has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import structlog
from aiohttp import web
from aiohttp.web_runner import GracefulExit

from tiergate.errors import ListenError

log = structlog.get_logger("tiergate.serve")

# How a listener's bound socket is served once the app has started (aiohttp's SockSite by default).
SiteFactory: TypeAlias = Callable[[web.AppRunner, socket.socket], web.BaseSite]


@dataclass(frozen=True)
class Listener:
    """An address to serve on, and the settings that chose it (named in any failure)."""

    host: str
    port: int
    host_setting: str
    port_setting: str
    site: SiteFactory | None = None


def serve(
    app: web.Application,
    listeners: Sequence[Listener],
    *,
    process: str,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Bind every listener, start the app, log `listening`, and serve until SIGINT or SIGTERM
    (on the loop `loop_factory` makes, e.g. uvloop's; the standard one by default)."""
    sockets = [(sock, listener.site) for listener in listeners for sock in bind(listener)]
    with (
        asyncio.Runner(loop_factory=loop_factory) as runner,
        contextlib.suppress(GracefulExit, KeyboardInterrupt),
    ):
        runner.run(_serve(app, sockets, process))


async def _serve(
    app: web.Application, sockets: list[tuple[socket.socket, SiteFactory | None]], process: str
) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    try:
        for sock, site in sockets:
            await (site or web.SockSite)(runner, sock).start()
        for sock, _ in sockets:
            host, port = sock.getsockname()[:2]
            log.info("listening", process=process, address=_address(host, port))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


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
