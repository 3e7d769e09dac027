"""Delivers the outbound webhook queue: signed POSTs, retried with backoff, every attempt logged.

At least once: a delivery is marked delivered only after a 2xx; a crash between the POST and the
mark sends it again (receivers de-duplicate on the event id). Each attempt is claimed first (its
next attempt pushed past the time the attempt can take), so daemons sharing one PostgreSQL mirror
do not send the same delivery side by side. After `max_attempts` a delivery is `failed` and stays
in the log (GET /v1/webhooks/deliveries), counted in a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from tiergate.amounts import Amount
from tiergate.catalog import Catalog
from tiergate.sync_daemon.mirror.overrides import tenant_overrides
from tiergate.sync_daemon.mirror.store import Mirror, MirrorAccount, MirrorTxn
from tiergate.sync_daemon.outbound.events import (
    entitlements_changed,
    grace_over,
    grace_started,
    thresholds_reached,
    usage_limit,
)
from tiergate.sync_daemon.outbound.queue import Due, claim, due, enqueue, first_time, next_due, record_attempt
from tiergate.webhook_signature import HEADER, sign

log = structlog.get_logger("tiergate.outbound")

BATCH = 20
MAX_BACKOFF_S = 3600.0
CLAIM_MARGIN_S = 5.0  # beyond twice the POST's timeout: the attempt's own mark has time to commit
ERROR_PAUSE_S = 1.0  # after a failure of the queue itself (e.g. a mirror connection lost)


class Outbound:
    """What the daemon knows about its webhook endpoints: enqueues events inside mirror transactions."""

    def __init__(self, endpoints: list[str], catalog: Catalog) -> None:
        self.endpoints = endpoints
        self.catalog = catalog

    def account_changed(
        self, txn: MirrorTxn, before: MirrorAccount | None, after: MirrorAccount, cause: dict[str, Any]
    ) -> None:
        """`entitlements.changed` and `payment.overdue` (grace_started) for a webhook's or a repair's change."""
        if not self.endpoints:
            return
        changed = entitlements_changed(before, after, cause, self.catalog)
        if changed is not None:
            enqueue(txn, self.endpoints, "entitlements.changed", after.tenant, changed)
        started = grace_started(before, after, self.catalog)
        if started is not None:
            enqueue(txn, self.endpoints, "payment.overdue", after.tenant, {**started, "cause": cause})

    def usage_changed(self, txn: MirrorTxn, counters: Mapping[tuple[str, str, str], Amount]) -> None:
        """`usage.threshold_crossed` for each alert a changed counter reached, once each."""
        if not self.endpoints:
            return
        for (tenant, code, period_start), used in counters.items():
            metric = self.catalog.metrics.get(code)
            if metric is None or not metric.alerts:
                continue
            override = tenant_overrides(txn.sql, tenant)
            value = next((o.value for o in override if o.feature == code and o.in_force()), None)
            limit = usage_limit(self.catalog, txn.account(tenant), code, value)
            for key, data in thresholds_reached(tenant, code, period_start, used, limit, metric.alerts):
                if first_time(txn, key):
                    enqueue(txn, self.endpoints, "usage.threshold_crossed", tenant, data)

    async def scan_graces(self, mirror: Mirror, now: datetime | None = None) -> int:
        """Enqueue `payment.overdue` (grace_over) for each past-due account whose grace ended, once."""
        if not self.endpoints:
            return 0
        moment = now or datetime.now(UTC)
        ended = [found for a in await mirror.accounts() if (found := grace_over(a, self.catalog, moment))]

        def put(txn: MirrorTxn) -> int:
            sent = 0
            for key, data in ended:
                if first_time(txn, key):
                    enqueue(txn, self.endpoints, "payment.overdue", str(data["tenant"]), data)
                    sent += 1
            return sent

        return await mirror.transact(put) if ended else 0


def backoff(attempts: int, base_s: float) -> float:
    """Seconds before the next try after `attempts` failures: base, 2 x base, 4 x base, ... (capped)."""
    return float(min(base_s * (2 ** max(attempts - 1, 0)), MAX_BACKOFF_S))


class WebhookSender:
    def __init__(
        self,
        mirror: Mirror,
        secret: str,
        *,
        max_attempts: int,
        retry_base_s: float,
        timeout_s: float,
        on_result: Callable[[str], None] = lambda outcome: None,
        poll_s: float = 0.2,
    ) -> None:
        self.mirror = mirror
        self._secret = secret
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.claim_s = 2 * timeout_s + CLAIM_MARGIN_S
        self.on_result = on_result
        self.poll_s = poll_s

    def __repr__(self) -> str:  # never the secret
        return f"WebhookSender(max_attempts={self.max_attempts})"

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while True:
                try:
                    sent = await self.send_due(session)
                except Exception as exc:  # the queue's own storage: logged, retried, never the end of sending
                    log.warning("webhook_queue_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                    await asyncio.sleep(ERROR_PAUSE_S)
                    continue
                if not sent:
                    await asyncio.sleep(self.poll_s)

    async def send_due(self, session: aiohttp.ClientSession) -> int:
        """Attempt what is due and not claimed by another daemon; the number attempted."""
        batch = await self.mirror.read(lambda conn: due(conn, time.time(), BATCH))
        sent = 0
        for item in batch:
            if await self._claim(item):
                await self._send(session, item)
                sent += 1
        return sent

    async def _claim(self, item: Due) -> bool:
        now = time.time()
        return await self.mirror.transact(lambda txn: claim(txn, item, now, now + self.claim_s))

    async def next_due(self) -> float | None:
        return await self.mirror.read(next_due)

    async def _send(self, session: aiohttp.ClientSession, item: Due) -> None:
        headers = {"Content-Type": "application/json", HEADER: sign(self._secret, item.body)}
        status: int | None = None
        error: str | None = None
        try:
            async with session.post(item.endpoint, data=item.body, headers=headers) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        ok = status is not None and 200 <= status < 300
        if not ok and error is None:
            error = f"HTTP {status}"
        attempts = item.attempts + 1
        outcome = "delivered" if ok else "failed" if attempts >= self.max_attempts else "pending"
        next_at = time.time() + (0 if ok else backoff(attempts, self.retry_base_s))
        await self.mirror.transact(
            lambda txn: record_attempt(
                txn, item, status=outcome, http_status=status, error=error, next_at=next_at
            )
        )
        self.on_result(outcome if outcome != "pending" else "retry")
        log_event = log.info if ok else log.warning
        log_event(
            "webhook_delivery",
            event_id=item.event_id,
            endpoint=item.endpoint,
            outcome=outcome,
            attempts=attempts,
            error=error,
        )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
