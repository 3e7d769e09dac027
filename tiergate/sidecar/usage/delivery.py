"""Delivers the usage outbox to the daemon's POST /v1/usage/batch: in order, at least once.

A batch leaves the outbox only when the daemon's answer has been recorded, so a crash at any
point re-sends it, and the daemon's idempotency (tenant, transaction_id) makes the re-send
count nothing twice. While the daemon is unreachable the batch is retried with capped
exponential backoff and jitter; the outbox keeps accepting meanwhile.

Nothing may wedge it: a batch is bounded in bytes as well as in events (under the daemon's body
limit); a batch the daemon refuses as such (413, 400, 422) is split in halves down to one event,
and an event refused on its own is quarantined (kept in the outbox, counted in `/v1/status` and a
metric, re-deliverable by the operator) so the events behind it go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from tiergate.feed import refused_token
from tiergate.periods import utc_now_text
from tiergate.sidecar.decisions.records import DecisionRecords
from tiergate.sidecar.usage.ledger import UsageLedger
from tiergate.sidecar.usage.outbox import Outbox, OutboxRow
from tiergate.sidecar.usage.traces import TraceMarks
from tiergate.tracing import TRACEPARENT, Tracing

log = structlog.get_logger("tiergate.delivery")

IDLE_WAIT_S = 1.0  # how long an empty outbox sleeps before it looks again (and prunes)
PRUNE_EVERY_S = 30.0


REFUSED = frozenset({400, 413, 422})  # the daemon refuses the request itself: retrying cannot help


class DeliveryError(Exception):
    """The daemon gave an answer we cannot record: retry the same batch."""


class BatchRefusedError(Exception):
    """The daemon refused this batch as such (too large, unreadable): split it, never resend it whole."""


class DeliveryAuthError(DeliveryError):
    """The daemon refused our bearer token: a setting to fix; retried in case it is being rotated."""


@dataclass
class DeliveryStatus:
    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    failures: int = 0
    splits: int = 0
    quarantined: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    last_delivery_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Delivery:
    def __init__(
        self,
        outbox: Outbox,
        pending: UsageLedger,
        *,
        daemon_url: str,
        token: str | None,
        position: Callable[[], int | None],
        batch_size: int = 500,
        max_bytes: int = 512 * 1024,
        linger_s: float = 0.0,
        backoff_max_s: float = 10.0,
        retention_s: float = 3600.0,
        tracing: Tracing | None = None,
        records: DecisionRecords | None = None,
    ) -> None:
        self.outbox = outbox
        self.pending = pending
        self.daemon_url = daemon_url
        self.token = token
        self.position = position
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._cap = batch_size  # halved after a refused batch, doubled back after each delivery
        self.linger_s = linger_s
        self.backoff_max_s = backoff_max_s
        self.retention_s = retention_s
        self.records = records  # deny records, shipped between usage batches
        self.status = DeliveryStatus()
        self.tracing = tracing
        self.traces = TraceMarks()  # filled by the usage handlers while tracing is on
        # Told the (tenant, transaction id) of every event the daemon answered for (quota leases).
        self.on_answered: Callable[[Iterable[tuple[str, str]]], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self._last_seq: int | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:  # a bug in one round must not end delivery for the life of the pod
            try:
                await self._deliver()
            except Exception as exc:
                log.exception("usage_delivery_crashed")
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                self.status.last_error_at = utc_now_text()
                await asyncio.sleep(self.backoff_max_s)

    async def _deliver(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
        async with aiohttp.ClientSession(self.daemon_url, headers=headers, timeout=timeout) as session:
            while True:
                await self._ship_records(session)
                rows = await self.outbox.next_batch(self._cap, self.max_bytes)
                if not rows:
                    await self._idle()
                    continue
                if len(rows) < self._cap and self.linger_s > 0:
                    # Let the burst gather: fewer deliveries, and a tenant spends less of its
                    # time inside an unanswered flight (where its reserves must wait).
                    await asyncio.sleep(self.linger_s)
                    rows = await self.outbox.next_batch(self._cap, self.max_bytes)
                try:
                    await self._deliver_rows(session, rows)
                except BatchRefusedError as exc:
                    await self._refused(rows, str(exc))

    async def _deliver_rows(self, session: aiohttp.ClientSession, rows: Sequence[OutboxRow]) -> None:
        floor = _highest(self.position(), self._last_seq)
        self.pending.begin_flight((row.key for row in rows), floor)
        try:
            seq, results = await self._send_until_answered(session, rows)
            rejected = self._record(rows, seq, results)  # pending confirmed before end_flight
        finally:
            self.pending.end_flight()
        await self.outbox.persist_answer(rows, seq, rejected)
        self._cap = min(self.batch_size, self._cap * 2)

    async def _ship_records(self, session: aiohttp.ClientSession) -> None:
        """Deny records to the daemon's POST /v1/decisions/batch, best effort: a failed shipment
        waits for the next round (within the queue's bound), a refused one is dropped and counted."""
        if self.records is None or not self.records.waiting:
            return
        batch = self.records.take()
        body = b'{"decisions":[' + b",".join(batch) + b"]}"
        try:
            async with session.post(
                "/v1/decisions/batch", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                if 400 <= response.status < 500:
                    self.records.drop(batch)
                    log.warning("decision_records_refused", status=response.status, records=len(batch))
                elif response.status != 200:
                    raise DeliveryError(f"daemon answered {response.status} to /v1/decisions/batch")
        except (aiohttp.ClientError, TimeoutError, OSError, DeliveryError) as exc:
            self.records.give_back(batch)
            log.warning("decision_records_not_shipped", error=str(exc), waiting=self.records.waiting)

    async def _refused(self, rows: Sequence[OutboxRow], error: str) -> None:
        """Split a refused batch; quarantine a refused single event so the rest can go on."""
        self.status.last_error, self.status.last_error_at = error, utc_now_text()
        if len(rows) > 1:
            self._cap = max(1, len(rows) // 2)
            self.status.splits += 1
            log.warning("usage_batch_split", events=len(rows), next_events=self._cap, error=error)
            return
        row = rows[0]
        self.outbox.set_aside(row)
        await self.outbox.persist_quarantine(row, error)
        self.status.quarantined += 1
        log.error(
            "usage_event_quarantined",
            transaction_id=row.transaction_id,
            tenant=row.key[0],
            bytes=row.size,
            error=error,
        )

    async def _idle(self) -> None:
        self.pending.settle(self.position())
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            await self.outbox.prune(self.position(), self.retention_s)
        self.outbox.ready.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.ready.wait(), IDLE_WAIT_S)

    async def _send_until_answered(
        self, session: aiohttp.ClientSession, rows: Sequence[OutboxRow]
    ) -> tuple[int, list[dict[str, Any]]]:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, OSError, DeliveryError)),
            wait=wait_exponential_jitter(multiplier=0.05, max=self.backoff_max_s),
            before_sleep=self._failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self.tracing is None:
                    return await self._send(session, rows)
                return await self._send_traced(self.tracing, session, rows)
        raise AssertionError("unreachable: tenacity retries forever")  # pragma: no cover

    async def _send_traced(
        self, tracing: Tracing, session: aiohttp.ClientSession, rows: Sequence[OutboxRow]
    ) -> tuple[int, list[dict[str, Any]]]:
        """One attempt in a span: a child of the first event's trace, linked to the others'."""
        traces = self.traces.of((row.key[0], row.transaction_id) for row in rows)
        parent, links = (traces[0], traces[1:]) if traces else (None, [])
        attributes = {"tiergate.events": len(rows)}
        with tracing.span(
            "usage.deliver", parent=parent, links=links, kind="client", attributes=attributes
        ) as sent:
            return await self._send(session, rows, traceparent=sent)

    async def _send(
        self, session: aiohttp.ClientSession, rows: Sequence[OutboxRow], *, traceparent: str | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        body = b'{"events":[' + b",".join(row.text.encode() for row in rows) + b"]}"
        headers = {"Content-Type": "application/json"}
        if traceparent is not None:
            headers[TRACEPARENT] = traceparent
        async with session.post("/v1/usage/batch", data=body, headers=headers) as response:
            refused = refused_token(response.status, "/v1/usage/batch", token_sent=self.token is not None)
            if refused is not None:
                raise DeliveryAuthError(refused)
            if response.status in REFUSED:
                text = (await response.text())[:300]
                raise BatchRefusedError(
                    f"daemon refused {len(rows)} events ({len(body)} bytes) with {response.status}: {text}"
                )
            if response.status != 200:
                text = (await response.text())[:300]
                raise DeliveryError(f"daemon answered {response.status} to /v1/usage/batch: {text}")
            answer = await response.json()
        try:
            seq, results = int(answer["seq"]), list(answer["results"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DeliveryError(f"malformed answer from /v1/usage/batch: {exc}") from exc
        if len(results) != len(rows):
            raise DeliveryError(f"daemon answered {len(results)} results for {len(rows)} events")
        return seq, results

    def _record(self, rows: Sequence[OutboxRow], seq: int, results: list[dict[str, Any]]) -> set[int]:
        """Synchronous on purpose: no other task may run between the answer and the pending update."""
        rejected = {
            row.id for row, result in zip(rows, results, strict=True) if result.get("status") == "rejected"
        }
        for row, result in zip(rows, results, strict=True):
            if row.id in rejected:
                log.error(
                    "usage_rejected_by_daemon",
                    transaction_id=row.transaction_id,
                    error=result.get("error"),
                )
        self.outbox.confirm(rows, seq, rejected)
        if self.on_answered is not None:
            self.on_answered((row.key[0], row.transaction_id) for row in rows)
        if self.tracing is not None:
            self.traces.forget((row.key[0], row.transaction_id) for row in rows)
        self._last_seq = _highest(seq, self._last_seq)
        duplicates = sum(r.get("status") == "duplicate" for r in results)
        self.status.batches += 1
        self.status.rejected += len(rejected)
        self.status.duplicates += duplicates
        self.status.delivered += len(rows) - len(rejected) - duplicates
        self.status.last_delivery_at = utc_now_text()
        return rejected

    def _failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.status.failures += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}" if exc else "unknown error"
        self.status.last_error_at = utc_now_text()
        if isinstance(exc, DeliveryAuthError):
            log.error("usage_delivery_auth_failed", error=str(exc), setting="TIERGATE_FEED_TOKEN")
        else:
            log.warning("usage_delivery_failed", error=self.status.last_error, backlog=self.outbox.backlog)


def _highest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
