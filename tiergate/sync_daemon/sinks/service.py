"""The sinks the settings turn on, as one cleanup context, and their part of /v1/status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import stripe
import structlog
from aiohttp import web

from tiergate.sync_daemon.billing.stripe_actions import make_client
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.sinks.lago import LagoSink
from tiergate.sync_daemon.sinks.runner import Sink, SinkMetrics, SinkRunner
from tiergate.sync_daemon.sinks.store import rewind
from tiergate.sync_daemon.sinks.stripe_meters import StripeMeterSink
from tiergate.sync_daemon.state import CATALOG, LEADER, METRICS, MIRROR, SETTINGS
from tiergate.sync_daemon.usage_query import stored_time

log = structlog.get_logger("tiergate.daemon.sinks")

SINKS = web.AppKey("sinks", list[SinkRunner])


def sinks_ctx(
    stripe_http: stripe.HTTPClient | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """After the services and scheduler contexts: one runner per configured sink, sending only
    while this daemon leads (app[LEADER]), stopped before the mirror closes. `stripe_http`
    replaces the meter sink's HTTP client (tests pass a recording one)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        http = stripe_http or stripe.AIOHTTPClient(timeout=settings.stripe_timeout_s)
        timeout = aiohttp.ClientTimeout(total=settings.sink_timeout_s)
        metrics = SinkMetrics(app[METRICS].registry)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            runners = [
                SinkRunner(
                    sink,
                    app[MIRROR],
                    metrics,
                    poll_s=settings.sink_poll_s,
                    backoff_max_s=settings.sink_backoff_max_s,
                    leader=app[LEADER],
                )
                for sink in _sinks(app, session, http)
            ]
            app[SINKS] = runners
            for runner in runners:
                runner.start()
                log.info("sink_started", sink=runner.sink.name)
            try:
                yield
            finally:
                for runner in runners:
                    await runner.stop()
                if stripe_http is None:
                    await http.close_async()  # type: ignore[no-untyped-call]  # the library leaves it untyped

    return ctx


def _sinks(app: web.Application, session: aiohttp.ClientSession, http: stripe.HTTPClient) -> list[Sink]:
    settings = app[SETTINGS]
    sinks: list[Sink] = []
    if settings.lago_api_url is not None and settings.lago_api_key is not None:
        key = settings.lago_api_key.get_secret_value()
        sinks.append(LagoSink(session, str(settings.lago_api_url), key, settings.lago_batch_size))
    if settings.stripe_meter_sink:
        client = make_client(
            settings.stripe_api_key.get_secret_value(),
            settings.stripe_base,
            http,
            settings.stripe_max_network_retries,
        )
        meters = {code: m.meter for code, m in app[CATALOG].metrics.items() if m.meter is not None}
        sinks.append(StripeMeterSink(client, meters, settings.stripe_meter_batch_size))
    return sinks


def sinks_status(app: web.Application) -> dict[str, Any]:
    return {runner.sink.name: runner.status.as_dict() for runner in app.get(SINKS, [])}


SINK_NAMES = ("lago", "stripe_meters")


def resend(mirror_location: str | Path, sink: str, since: datetime) -> tuple[int, int]:
    """`tiergate usage resend`: move `sink`'s cursor back before the first event ingested at or
    after `since` (a running daemon notices at its next batch); returns (cursor before, after)."""

    async def once() -> tuple[int, int]:
        mirror = mirror_for(mirror_location)
        await mirror.open()
        try:
            return await mirror.transact(lambda txn: rewind(txn, sink, stored_time(since)))
        finally:
            await mirror.close()

    return asyncio.run(once())
