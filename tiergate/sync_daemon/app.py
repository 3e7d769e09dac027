"""The sync daemon application: settings -> mirror, Stripe, applier, reconciler, scheduler -> routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tiergate.bounded import BOUND_HITS, BoundHits
from tiergate.catalog import Catalog, load_catalog
from tiergate.serve import Listener, serve
from tiergate.sync_daemon.billing.actions import BillingActions
from tiergate.sync_daemon.billing.api import add_billing_routes, billing_actions_ctx
from tiergate.sync_daemon.leader import Leader, PostgresLeader, SoleLeader, when_leading
from tiergate.sync_daemon.leases.api import add_lease_routes
from tiergate.sync_daemon.metrics import DaemonMetrics
from tiergate.sync_daemon.mirror.backends import mirror_for
from tiergate.sync_daemon.mirror.feed import feed_changes, feed_snapshot
from tiergate.sync_daemon.mirror.postgres_schema import LEADER_LOCK
from tiergate.sync_daemon.mirror.store import Mirror
from tiergate.sync_daemon.mirror.usage import number_all_stored_events
from tiergate.sync_daemon.ops import add_ops_routes
from tiergate.sync_daemon.outbound.api import add_outbound_routes
from tiergate.sync_daemon.outbound.delivery import Outbound, WebhookSender
from tiergate.sync_daemon.outbound.delivery import stop as stop_sender
from tiergate.sync_daemon.overrides import add_override_routes
from tiergate.sync_daemon.settings import DaemonSettings
from tiergate.sync_daemon.sinks.service import sinks_ctx
from tiergate.sync_daemon.state import (
    APPLIER,
    BILLING,
    CATALOG,
    FLEET,
    LEADER,
    METRICS,
    MIRROR,
    RECONCILER,
    SETTINGS,
)
from tiergate.sync_daemon.stripe_sync.apply import EventApplier
from tiergate.sync_daemon.stripe_sync.reconcile import Reconciler, ReconcileSummary
from tiergate.sync_daemon.stripe_sync.source import BillingSource
from tiergate.sync_daemon.stripe_sync.stripe_source import StripeBilling
from tiergate.sync_daemon.stripe_sync.translate import Translator
from tiergate.sync_daemon.stripe_sync.webhook import receive_stripe_event
from tiergate.sync_daemon.support.api import add_support_routes
from tiergate.sync_daemon.support.console import add_console_routes
from tiergate.sync_daemon.support.decisions import add_decision_routes
from tiergate.sync_daemon.support.fleet import Fleet
from tiergate.sync_daemon.traces import TRACING, tracing_ctx, tracing_middleware
from tiergate.sync_daemon.usage import add_usage_routes
from tiergate.tracing import tracing_for
from tiergate.web import error_middleware

log = structlog.get_logger("tiergate.daemon")

TRIM_EVERY_S = 600


@dataclass
class Services:
    mirror: Mirror
    billing: BillingSource
    metrics: DaemonMetrics
    applier: EventApplier
    reconciler: Reconciler


def make_billing(settings: DaemonSettings) -> StripeBilling:
    return StripeBilling(
        settings.stripe_api_key.get_secret_value(),
        settings.stripe_webhook_secret.get_secret_value(),
        api_base=settings.stripe_base,
        retries=settings.stripe_max_network_retries,
        timeout_s=settings.stripe_timeout_s,
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: DaemonSettings, billing: BillingSource | None = None, catalog: Catalog | None = None
) -> AsyncIterator[Services]:
    """Everything but HTTP: shared by the server and `tiergate sync --full`."""
    translator = Translator(catalog or load_catalog(settings.plans), settings.tenant_metadata_key)
    mirror = mirror_for(settings.mirror_location, pool_size=settings.mirror_pool_size)
    await mirror.open()
    source = billing or make_billing(settings)
    try:
        metrics = DaemonMetrics(feed_seq=lambda: mirror.seq)
        metrics.feed_unnumbered_stale.set_function(lambda: mirror.backlog.stale)
        outbound = Outbound(settings.webhook_endpoint_list, translator.catalog)
        applier = EventApplier(
            mirror, source, translator, metrics, refetch=settings.stripe_refetch, outbound=outbound
        )
        reconciler = Reconciler(mirror, source, translator, metrics, outbound)
        yield Services(mirror, source, metrics, applier, reconciler)
    finally:
        if billing is None:  # a billing passed in belongs to the caller
            await source.close()
        await mirror.close()


def create_app(
    settings: DaemonSettings,
    *,
    billing: BillingSource | None = None,
    actions: BillingActions | None = None,
    sink_http: stripe.HTTPClient | None = None,
) -> web.Application:
    """`billing`, `actions` and `sink_http` (the Stripe meter sink's HTTP client) override the
    Stripe adapters built from the settings (tests pass their own)."""
    catalog = load_catalog(settings.plans)  # a bad catalog fails here, before the server binds
    tracing = tracing_for("tiergate-sync-daemon", settings.otel_exporter_otlp_endpoint, os.environ)
    middlewares = [error_middleware("daemon")]
    if tracing is not None:  # else nothing of OpenTelemetry is imported or called
        middlewares.insert(0, tracing_middleware(tracing))  # outermost: the span sees the error's status
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    if tracing is not None:
        app[TRACING] = tracing
        app.cleanup_ctx.append(tracing_ctx)
    app[CATALOG] = catalog
    app[FLEET] = Fleet()
    app[BOUND_HITS] = BoundHits()
    app.cleanup_ctx.append(_services_ctx(billing))
    app.cleanup_ctx.append(_scheduler_ctx)
    app.cleanup_ctx.append(billing_actions_ctx(actions))
    app.cleanup_ctx.append(sinks_ctx(sink_http))
    app.cleanup_ctx.append(_webhook_sender_ctx)
    app.router.add_post("/webhooks/stripe", receive_stripe_event)
    app.router.add_get("/v1/feed/snapshot", feed_snapshot)
    app.router.add_get("/v1/feed/changes", feed_changes)
    add_ops_routes(app)
    add_billing_routes(app)
    add_override_routes(app)
    add_outbound_routes(app)
    add_usage_routes(app, catalog)
    add_lease_routes(app, settings.lease_ttl_s)
    add_support_routes(app)
    add_decision_routes(app)
    add_console_routes(app)
    return app


def _services_ctx(billing: BillingSource | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_services(app[SETTINGS], billing, app[CATALOG]) as services:
            app[MIRROR] = services.mirror
            app[BILLING] = services.billing
            app[METRICS] = services.metrics
            services.metrics.registry.register(app[BOUND_HITS])
            app[APPLIER] = services.applier
            app[RECONCILER] = services.reconciler
            services.metrics.mirror_lag.set_function(services.reconciler.lag.seconds)
            log.info("mirror_opened", mirror=services.mirror.where, seq=services.mirror.seq)
            yield

    return ctx


def make_leader(settings: DaemonSettings) -> Leader:
    if settings.mirror_url is None:
        return SoleLeader()
    return PostgresLeader(settings.mirror_url.get_secret_value(), LEADER_LOCK, settings.leader_check_s)


async def _webhook_sender_ctx(app: web.Application) -> AsyncIterator[None]:
    """Deliver the outbound webhook queue while the daemon runs (when endpoints are configured)."""
    settings = app[SETTINGS]
    if not settings.webhook_endpoint_list or settings.webhook_secret is None:
        yield
        return
    sender = WebhookSender(
        app[MIRROR],
        settings.webhook_secret.get_secret_value(),
        max_attempts=settings.webhook_max_attempts,
        retry_base_s=settings.webhook_retry_base_s,
        timeout_s=settings.webhook_timeout_s,
        on_result=lambda outcome: app[METRICS].outbound.labels(outcome).inc(),
    )
    task = asyncio.create_task(sender.run(), name="webhook-sender")
    yield
    await stop_sender(task)


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """The scheduled jobs, on every daemon, each doing its work only on the leader."""
    settings = app[SETTINGS]
    mirror = app[MIRROR]
    leader = app[LEADER] = make_leader(settings)
    app[METRICS].leader.set_function(lambda: float(leader.is_leader))
    await leader.start()
    scheduler = AsyncIOScheduler()
    interval = timedelta(seconds=settings.reconcile_interval_s)
    first = datetime.now(UTC) + (timedelta(0) if settings.reconcile_at_start else interval)
    if settings.mirror_url is not None and settings.reconcile_at_start:
        first += timedelta(seconds=settings.leader_check_s)  # an election first, then the first run
    jobs: list[tuple[str, Callable[..., Awaitable[Any]], float, list[Any], datetime | None]] = [
        ("reconcile", app[RECONCILER].run, settings.reconcile_interval_s, [], first),
        (
            "trim_changes",
            mirror.trim_changes,
            TRIM_EVERY_S,
            [settings.change_retention, timedelta(days=settings.change_retention_days)],
            None,
        ),
        ("retention", functools.partial(run_retention, app), settings.retention_interval_s, [], None),
    ]
    if settings.webhook_endpoint_list:
        outbound = app[APPLIER].outbound
        assert outbound is not None
        jobs.append(("grace_scan", outbound.scan_graces, settings.webhook_grace_scan_s, [mirror], None))
    for name, job, every_s, args, first_run in jobs:
        scheduler.add_job(
            when_leading(leader, job),
            "interval",
            seconds=every_s,
            args=args,
            id=name,
            max_instances=1,
            coalesce=True,
            **({"next_run_time": first_run} if first_run else {}),
        )
    scheduler.start()
    yield
    scheduler.shutdown(wait=False)
    await leader.stop()


async def run_retention(app: web.Application) -> dict[str, int]:
    """Delete old webhook ids, usage events and counters of long-ended periods (leader only)."""
    await number_all_stored_events(app[MIRROR])  # retention deletes numbered events only (ADR 21)
    deleted = await app[MIRROR].prune(app[SETTINGS].retention())
    for table, n in deleted.items():
        app[METRICS].retention_deleted.labels(table).inc(n)
    log.info("retention", **deleted)
    return deleted


def run_full_sync(
    settings: DaemonSettings, *, progress: Callable[[int], None] | None = None
) -> ReconcileSummary:
    """One reconciliation, for `tiergate sync --full` (blocking; opens and closes its own resources)."""

    async def once() -> ReconcileSummary:
        async with open_services(settings) as services:
            return await services.reconciler.run(progress)

    return asyncio.run(once())


def run(settings: DaemonSettings) -> None:
    """Serve until interrupted (blocking); binds TIERGATE_DAEMON_HOST:TIERGATE_DAEMON_PORT first."""
    listener = Listener(
        settings.daemon_host, settings.daemon_port, "TIERGATE_DAEMON_HOST", "TIERGATE_DAEMON_PORT", "daemon"
    )
    app = create_app(settings)
    serve(app, [listener], process="sync_daemon", bounds=settings.listener_bounds, hits=app[BOUND_HITS])
