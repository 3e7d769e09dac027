"""One loop per sink: read stored events after its cursor, send a batch, advance; back off on failure.

Stored events are numbered after they commit, by the sink before it reads (ADR 21).
At least once: the cursor moves only after the sink answered, so a crash between the two sends the
batch again, and each sink's own de-duplication (Lago's `transaction_id`, Stripe's meter-event
`identifier`) makes the repeat harmless.

Several daemons on one PostgreSQL mirror: only the leader (tiergate.sync_daemon.leader) sends; the others
stand by and look again every `STANDBY_CHECK_S`. The cursor is in the shared database, so a new
leader goes on from the last batch the old one finished with; a batch the old leader sent but
had not recorded when it died goes out again, and the sink's de-duplication drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from tiergate.errors import TierError
from tiergate.periods import parse_rfc3339
from tiergate.sync_daemon.leader import Leader, SoleLeader
from tiergate.sync_daemon.mirror.store import Mirror
from tiergate.sync_daemon.mirror.usage import number_stored_events
from tiergate.sync_daemon.sinks.store import (
    SinkEvent,
    SinkPosition,
    advance,
    events_after,
    failures,
    position,
)

log = structlog.get_logger("tiergate.daemon.sinks")


STANDBY_CHECK_S = 0.25


class SinkUnavailableError(TierError):
    """The sink could not take a batch now (network, 5xx, 429, auth): retried with backoff."""

    code = "sink_unavailable"
    status = 503


class Sink(Protocol):
    """A destination for stored usage events."""

    name: str
    batch_size: int

    async def send(self, events: Sequence[SinkEvent]) -> dict[int, str]:
        """Deliver the batch; returns the events refused for good ({seq: reason}), all others
        delivered (or already there). Raises SinkUnavailableError to have the batch retried."""
        ...


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "tiergate_sink_events",
            "Stored usage events a sink finished with, by outcome (delivered, refused for good).",
            ["sink", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            "tiergate_sink_errors",
            "Batches a sink could not take (retried with backoff).",
            ["sink"],
            registry=registry,
        )
        self.lag = Gauge(
            "tiergate_sink_lag_events",
            "Stored events the sink has not finished with.",
            ["sink"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "tiergate_sink_lag_seconds",
            "Age of the oldest stored event the sink has not finished with (0 when caught up).",
            ["sink"],
            registry=registry,
        )


@dataclass
class SinkStatus:
    delivered: int = 0
    errors: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    backoff_s: float = 0.0
    position: SinkPosition | None = None
    recent_failures: list[dict[str, Any]] = field(default_factory=list)
    refused_total: int = 0
    active: bool = False  # this daemon sends (it leads); False: another daemon does

    def as_dict(self) -> dict[str, Any]:
        pos = self.position
        return {
            "role": "sending (leader)" if self.active else "standby (another daemon leads)",
            "cursor": pos.cursor if pos else None,
            "lag_events": pos.lag if pos else None,
            "delivered": self.delivered,
            "refused_for_good": self.refused_total,
            "recent_refusals": self.recent_failures,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "backoff_s": self.backoff_s,
        }


class SinkRunner:
    def __init__(
        self,
        sink: Sink,
        mirror: Mirror,
        metrics: SinkMetrics,
        *,
        poll_s: float = 5.0,
        backoff_max_s: float = 60.0,
        leader: Leader | None = None,
    ) -> None:
        self.sink = sink
        self.leader: Leader = leader or SoleLeader()
        self.mirror = mirror
        self.metrics = metrics
        self.poll_s = poll_s
        self.backoff_max_s = backoff_max_s
        self.status = SinkStatus()
        self._task: asyncio.Task[None] | None = None
        self._loaded = False  # refusals recorded before this start are read once

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.sink.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.0
        while True:
            self.status.active = self.leader.is_leader
            if not self.status.active:
                await asyncio.sleep(STANDBY_CHECK_S)
                continue
            tick = self.mirror.watch()  # before the read: an ingest in between still wakes us
            try:
                moved = await self.step()
                delay = 0.0
            except SinkUnavailableError as exc:
                delay = min(max(delay * 2, 0.1), self.backoff_max_s)
                self._failed(str(exc), delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.0))
                continue
            except Exception as exc:  # a bug or the mirror failing: visible, retried, never a dead task
                delay = min(max(delay * 2, 0.5), self.backoff_max_s)
                log.exception("sink_crashed", sink=self.sink.name)
                self._failed(f"{type(exc).__name__}: {exc}", delay)
                await asyncio.sleep(delay)
                continue
            if not moved:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tick.wait(), self.poll_s)

    async def step(self) -> bool:
        """Send one batch after the cursor; False when there was nothing to send.

        Events committed since the last step are numbered first (ADR 21): the cursor only ever
        passes numbered events, and an event committing later gets a higher number."""
        name = self.sink.name
        await self.mirror.transact(number_stored_events)
        pos = await self.mirror.read(lambda conn: position(conn, name))
        self._observe(pos)
        if pos.lag == 0:
            return False
        batch = await self.mirror.read(lambda conn: events_after(conn, pos.cursor, self.sink.batch_size))
        if not batch:
            return False
        refused = await self.sink.send(batch)
        to = batch[-1].seq
        moved = await self.mirror.transact(lambda txn: advance(txn, name, pos.cursor, to, refused))
        if not moved:
            log.info("sink_rewound", sink=name)
            return True
        self._delivered(len(batch) - len(refused), refused)
        if refused or not self._loaded:
            self._loaded = True
            total, recent = await self.mirror.read(lambda conn: failures(conn, name))
            self.status.refused_total, self.status.recent_failures = total, recent
        return True

    def _observe(self, pos: SinkPosition) -> None:
        self.status.position = pos
        self.metrics.lag.labels(self.sink.name).set(pos.lag)
        oldest = parse_rfc3339(pos.next_received_at) if pos.next_received_at else None
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        self.metrics.lag_seconds.labels(self.sink.name).set(max(age, 0.0))

    def _delivered(self, n: int, refused: dict[int, str]) -> None:
        self.status.delivered += n
        self.status.backoff_s = 0.0
        self.metrics.events.labels(self.sink.name, "delivered").inc(n)
        if refused:
            self.metrics.events.labels(self.sink.name, "refused").inc(len(refused))
            first = next(iter(refused.items()))
            log.warning("sink_refused_events", sink=self.sink.name, count=len(refused), first=first)
        log.info("sink_delivered", sink=self.sink.name, events=n, refused=len(refused))

    def _failed(self, error: str, delay: float) -> None:
        self.status.errors += 1
        self.status.last_error = error
        self.status.last_error_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.status.backoff_s = delay
        self.metrics.errors.labels(self.sink.name).inc()
        log.warning("sink_failed", sink=self.sink.name, error=error, retry_in_s=round(delay, 2))
