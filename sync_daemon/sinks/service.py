"""The sinks the settings turn on, as one cleanup context, and their part of /v1/status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from sync_daemon.mirror.store import Mirror
from sync_daemon.sinks.lago import LagoSink
from sync_daemon.sinks.runner import Sink, SinkMetrics, SinkRunner
from sync_daemon.sinks.store import rewind
from sync_daemon.state import METRICS, MIRROR, SETTINGS
from sync_daemon.usage_query import stored_time

log = structlog.get_logger("tiergate.daemon.sinks")

SINKS = web.AppKey("sinks", list[SinkRunner])


async def sinks_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the services context: one runner per configured sink, stopped before the mirror closes."""
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=settings.sink_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sinks: list[Sink] = []
        if settings.lago_api_url is not None and settings.lago_api_key is not None:
            sinks.append(
                LagoSink(
                    session,
                    str(settings.lago_api_url),
                    settings.lago_api_key.get_secret_value(),
                    settings.lago_batch_size,
                )
            )
        metrics = SinkMetrics(app[METRICS].registry)
        runners = [
            SinkRunner(
                sink,
                app[MIRROR],
                metrics,
                poll_s=settings.sink_poll_s,
                backoff_max_s=settings.sink_backoff_max_s,
            )
            for sink in sinks
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


def sinks_status(app: web.Application) -> dict[str, Any]:
    return {runner.sink.name: runner.status.as_dict() for runner in app.get(SINKS, [])}


SINK_NAMES = ("lago",)


def resend(mirror_path: Path, sink: str, since: datetime) -> tuple[int, int]:
    """`tiergate usage resend`: move `sink`'s cursor back before the first event ingested at or
    after `since` (a running daemon notices at its next batch); returns (cursor before, after)."""

    async def once() -> tuple[int, int]:
        mirror = Mirror(mirror_path)
        await mirror.open()
        try:
            return await mirror.transact(lambda txn: rewind(txn, sink, stored_time(since)))
        finally:
            await mirror.close()

    return asyncio.run(once())
