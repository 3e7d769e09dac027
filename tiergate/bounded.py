"""What one listener lets a client hold: header and body read time, idle keep-alive, connections.

Both servers' aiohttp listeners (tiergate/serve.py) and the sidecar's check listener use these
rules, so a slow or idle client costs the same bounded amount everywhere, and a flood on one
listener cannot starve another: each listener counts its own connections.

- The header clock starts with the first byte of a request and stops once its headers are parsed;
  the body clock then runs until the body has arrived. Either running out is a 408 in the JSON
  error shape, and the connection is closed.
- A connection past a listener's cap is answered 503 and closed at once.
- An idle keep-alive connection is closed after the idle timeout (aiohttp's keep-alive timer).

Every bound hit is counted (`tiergate_listener_bounds_total{listener,bound}`) and logged, at most
one line a second per listener and bound (with how many hits the line stands for), so a flood
does not flood the logs too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any, cast

import orjson
import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = structlog.get_logger("tiergate.listeners")

SWEEP_EVERY_S = 0.25
LOG_EVERY_S = 1.0
LINGER_S = 2.0  # a refused connection's last chance to read its 503
BOUNDS = ("header_timeout", "body_timeout", "idle_timeout", "connections")


@dataclass(frozen=True)
class ListenerBounds:
    """A listener's limits (the TIERGATE_HEADER_TIMEOUT_S … TIERGATE_MAX_CONNECTIONS settings)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0
    max_connections: int = 1000


class ListenerSettings(BaseSettings):
    """The bounds settings both processes' settings classes inherit (one name, one meaning)."""

    model_config = SettingsConfigDict(env_prefix="TIERGATE_", frozen=True, extra="ignore")

    # A request's headers, then its body, must arrive within these (408, then closed).
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # An idle keep-alive connection is closed after this.
    idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 75.0
    # Connections each listener holds at once; one more is answered 503 and closed.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1000

    @property
    def listener_bounds(self) -> ListenerBounds:
        return ListenerBounds(
            self.header_timeout_s, self.body_timeout_s, self.idle_timeout_s, self.max_connections
        )


@dataclass(eq=False)  # a registry keeps its collectors in a dict
class BoundHits(Collector):
    """Bound hits by listener and bound: plain integers, Prometheus samples when scraped."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _logged_at: dict[tuple[str, str], float] = field(default_factory=dict)
    _unlogged: dict[tuple[str, str], int] = field(default_factory=dict)

    def hit(self, listener: str, bound: str, **detail: Any) -> None:
        """Count one hit; log it unless a line for the same listener and bound went out < 1 s ago."""
        key = (listener, bound)
        self.counts[key] = self.counts.get(key, 0) + 1
        self._unlogged[key] = self._unlogged.get(key, 0) + 1
        now = time.monotonic()
        if now - self._logged_at.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[key] = now
            hits = self._unlogged.pop(key)
            log.warning("listener_bound_hit", listener=listener, bound=bound, hits=hits, **detail)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "tiergate_listener_bounds",
            "Connections a listener bound ended or refused (header_timeout, body_timeout, "
            "idle_timeout, connections).",
            labels=["listener", "bound"],
        )
        for (listener, bound), value in sorted(self.counts.items()):
            family.add_metric([listener, bound], value)
        yield family


BOUND_HITS = web.AppKey("bound_hits", BoundHits)


def refusal(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the JSON error shape that closes the connection."""
    body = orjson.dumps({"error": {"code": code, "message": message, "field": None}})
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
            b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n",
            body,
        )
    )


def too_many_connections(listener: str, cap: int) -> bytes:
    return refusal(
        503,
        "too_many_connections",
        f"the {listener} listener holds its maximum of {cap} connections (TIERGATE_MAX_CONNECTIONS); "
        "retry shortly",
    )


def read_timeout(part: str, limit_s: float, setting: str) -> bytes:
    return refusal(
        408, "request_timeout", f"the request's {part} took over {limit_s:g} s to arrive ({setting})"
    )


class RefusedConnection(asyncio.Protocol):
    """A connection past the cap: one 503 and our side shut. What the client sends meanwhile is
    discarded (closing with unread bytes would reset the connection before the 503 is read) until
    it closes too, or for LINGER_S at most."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # discarded

    def eof_received(self) -> bool:
        return False  # the client is done too: close


class Sweeper:
    """Runs `sweep(now)` on every tracked connection a few times a second."""

    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.sweep(now)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def capped(
    listener: str,
    bounds: ListenerBounds,
    hits: BoundHits,
    open_connections: Callable[[], int],
    make: Callable[[], asyncio.BaseProtocol],
) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory that answers 503 past `bounds.max_connections` open connections."""
    answer = too_many_connections(listener, bounds.max_connections)

    def factory() -> asyncio.BaseProtocol:
        if open_connections() >= bounds.max_connections:
            hits.hit(listener, "connections", cap=bounds.max_connections)
            return RefusedConnection(answer)
        return make()

    return factory
