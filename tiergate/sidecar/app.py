"""The sidecar application: settings -> replica, engine, reloader, decisions -> HTTP routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
import uvloop
from aiohttp import web

from tiergate.bounded import BOUND_HITS, BoundHits
from tiergate.errors import PolicyError, ReplicaError, TierError
from tiergate.policy.engine import PolicyEngine
from tiergate.serve import Listener, serve
from tiergate.sidecar.api.authz import add_authz_routes
from tiergate.sidecar.api.check import add_routes
from tiergate.sidecar.api.front import front
from tiergate.sidecar.api.guard import add_unrouted
from tiergate.sidecar.api.listeners import AUTHZ_LISTENER_PORTS, DIAGNOSTICS_LISTENER_PORTS
from tiergate.sidecar.api.usage import add_usage_routes
from tiergate.sidecar.decisions.cache import DecisionCache
from tiergate.sidecar.decisions.records import DecisionRecords
from tiergate.sidecar.decisions.service import DecisionService, RouteResolver
from tiergate.sidecar.decisions.shadow import ShadowPolicy
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.policy.reload import PolicyReloader
from tiergate.sidecar.replica import damage
from tiergate.sidecar.replica.follower import LONG_POLL_S, Follower
from tiergate.sidecar.replica.license_source import LicenseSource, key_paths
from tiergate.sidecar.replica.store import ReplicaReader
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sidecar.state import (
    DECISIONS,
    FOLLOWER,
    LICENSE,
    METRICS,
    POLICIES,
    READER,
    ROUTES,
    SETTINGS,
    TRACING,
    Policies,
)
from tiergate.sidecar.usage.ledger import UsageLedger
from tiergate.tracing import tracing_for

log = structlog.get_logger("tiergate.sidecar")


def create_app(settings: SidecarSettings, *, engine: PolicyEngine | None = None) -> web.Application:
    """`engine` overrides the one TIERGATE_ENGINE picks (tests pass their own)."""
    # Each regorus eval error would otherwise capture a Rust backtrace (~0.5 ms and a page of text).
    os.environ["RUST_BACKTRACE"] = "0"
    os.environ["RUST_LIB_BACKTRACE"] = "0"
    # No middlewares: each route guards itself (tiergate/sidecar/api/guard.py), the hot check inline.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    tracing = tracing_for("tiergate-sidecar", settings.otel_exporter_otlp_endpoint, os.environ)
    if tracing is not None:  # else nothing of OpenTelemetry is imported or called
        app[TRACING] = tracing
        app.cleanup_ctx.append(_tracing_ctx)
    app[BOUND_HITS] = BoundHits()
    app.cleanup_ctx.append(_replica_ctx)
    if settings.daemon_url is not None:
        app.cleanup_ctx.append(_follower_ctx)
    app.cleanup_ctx.append(_engine_ctx(engine))
    add_routes(app)
    add_usage_routes(app)  # its cleanup context needs the engine's: it comes after
    add_authz_routes(app)  # and the ingress gate's needs both
    add_unrouted(app)  # last: the JSON 404 and 405
    if settings.check_port is not None:
        from tiergate.sidecar.api.check_listener import check_listener_ctx

        app.cleanup_ctx.append(check_listener_ctx)
    if settings.authz_grpc_host is not None:
        from tiergate.sidecar.ingress.grpc_ext_authz import grpc_ctx

        app.cleanup_ctx.append(grpc_ctx)  # after the gate's
    app.on_startup.append(_freeze_startup_objects)
    return app


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move everything built at start-up out of the collector's reach: full collections then
    scan only what requests create, which keeps their pauses out of the latency tail."""
    gc.collect()
    gc.freeze()


async def _tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    log.info("tracing_on", traces_url=app[TRACING].traces_url)
    yield
    await asyncio.to_thread(app[TRACING].shutdown)  # exports the last spans


async def _replica_ctx(app: web.Application) -> AsyncIterator[None]:
    """The reader, and the one task that looks for other processes' commits (an import)."""
    settings = app[SETTINGS]
    found = _set_aside_if_damaged(settings)
    license = _license_source(settings)
    if license is not None:
        license.start()  # a license that does not verify stops the start-up, naming the reason
        app[LICENSE] = license
    reader = ReplicaReader(settings.replica_path)
    if found is not None:
        reader.damage.found_at_start(*found)
    app[READER] = reader
    unimported = reader.meta.data_as_of is None and reader.count_accounts() == 0
    if license is None and settings.daemon_url is None and unimported:
        log.warning(
            "static_mode_without_data",
            replica=str(settings.replica_path),
            hint="no TIERGATE_DAEMON_URL and an empty replica: every tenant gets the default tier; "
            "set TIERGATE_DAEMON_URL or run `tiergate replica import`",
        )
    tasks = [asyncio.create_task(reader.watch(), name="replica-watch")]
    if license is not None:
        every_s = settings.license_check_every_s
        tasks.append(asyncio.create_task(license.watch(every_s), name="license-watch"))
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    reader.close()


def _license_source(settings: SidecarSettings) -> LicenseSource | None:
    if settings.license_path is None or settings.license_public_keys is None:
        return None
    return LicenseSource(
        settings.license_path,
        key_paths(settings.license_public_keys),
        settings.replica_path,
        busy_timeout_s=settings.replica_busy_timeout_s,
    )


def _set_aside_if_damaged(settings: SidecarSettings) -> tuple[str, Path] | None:
    """Following a daemon, a damaged replica is moved aside and downloaded again (on a signed
    license, written again from it); in static mode there is nowhere to get it from, so the sidecar
    refuses to start. Returns what was found and where the file went."""
    found = damage.problem(settings.replica_path)
    if found is None:
        return None
    if settings.daemon_url is None and settings.license_path is None:
        raise ReplicaError(
            f"replica {settings.replica_path} is damaged ({found}); restore it with "
            "`tiergate replica import <backup.json>`, or set TIERGATE_DAEMON_URL to download it"
        )
    return found, damage.move_aside(settings.replica_path, found)


async def _follower_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    token = settings.sent_feed_token
    poll_wait_s = max(0.5, min(LONG_POLL_S, settings.staleness_budget_s / 2))
    follower = Follower(
        str(settings.daemon_url),
        token,
        settings.replica_path,
        poll_wait_s=poll_wait_s,
        backoff_max_s=settings.follower_backoff_max_s,
        busy_timeout_s=settings.replica_busy_timeout_s,
    )
    follower.on_applied = app[READER].applied  # the follower announces its batches through the reader
    follower.damage = app[READER].damage  # damage either of them meets, the follower repairs
    follower.on_set_aside = app[READER].reopen
    app[FOLLOWER] = follower
    await follower.start()
    yield
    await follower.stop()


def _make_engine(settings: SidecarSettings) -> PolicyEngine:
    if settings.engine == "opa":
        from tiergate.sidecar.policy.opa_server import OpaServerEngine

        return OpaServerEngine(str(settings.opa_url), timeout_s=settings.engine_timeout_s)
    from tiergate.policy.embedded import EmbeddedEngine

    return EmbeddedEngine(compiled=settings.engine_vm)


def _engine_ctx(override: PolicyEngine | None):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        engine = override or _make_engine(settings)
        metrics = SidecarMetrics(replica_age=lambda: app[DECISIONS].replica_age() or 0.0)
        decisions = DecisionService(
            app[READER],
            engine,
            metrics,
            cache=DecisionCache(
                settings.decision_cache_size,
                settings.decision_cache_ttl_s,
                max_bytes=int(settings.decision_cache_mb * 1024 * 1024),
            ),
            ledger=UsageLedger(),
            log_sample=settings.decision_log_sample,
            log_denies=settings.decision_log_denies,
            staleness_budget_s=settings.staleness_budget_s if settings.daemon_url else None,
            not_ready=settings.not_ready_answer if settings.daemon_url else None,
            since_contact=app[FOLLOWER].data_age if FOLLOWER in app else None,
        )
        reloader = PolicyReloader(
            engine,
            settings.policies,
            settings.plans,
            on_reload=lambda revision: _reloaded(app, revision),
            on_failure=lambda error: metrics.reloads.labels("failed").inc(),
        )
        decisions.catalog = lambda: reloader.bundle.catalog if reloader.bundle else None
        decisions.records = DecisionRecords(
            int(settings.decision_record_mb * 1024 * 1024),
            allow_sample=settings.decision_record_allow_sample,
            ship_queue=settings.decision_record_ship_queue if settings.daemon_url else 0,
            on_drop=metrics.decision_records_dropped.inc,
        )
        app[METRICS] = metrics
        metrics.registry.register(app[BOUND_HITS])
        app[DECISIONS] = decisions
        if FOLLOWER in app:
            metrics.watch_follower(app[FOLLOWER].status)
            metrics.watch_lag(app[FOLLOWER].seconds_since_contact, lambda: app[FOLLOWER].status.daemon_lag_s)
        metrics.watch_damage(app[READER].damage)
        if LICENSE in app:
            metrics.watch_license(app[LICENSE])
        app[ROUTES] = RouteResolver(engine)
        app[POLICIES] = Policies(engine, reloader)
        await reloader.start()
        shadow: PolicyReloader | None = None
        try:
            if settings.shadow_policies is not None:
                shadow = await _start_shadow(settings, decisions, reloader)
            yield
        finally:
            if shadow is not None:
                await shadow.stop()
                await shadow.engine.close()
            await reloader.stop()
            await engine.close()
            decisions.decision_log.flush()  # lines of the last loop turn

    return ctx


async def _start_shadow(
    settings: SidecarSettings, decisions: DecisionService, live: PolicyReloader
) -> PolicyReloader:
    """The shadow bundle on an embedded engine of its own, hot-reloaded like the live one."""
    from tiergate.policy.embedded import EmbeddedEngine

    assert settings.shadow_policies is not None
    engine = EmbeddedEngine(compiled=settings.engine_vm)
    reloader = PolicyReloader(engine, settings.shadow_policies, settings.shadow_plans or settings.plans)

    def features() -> set[str]:
        bundles = (live.bundle, reloader.bundle)
        return {f for bundle in bundles if bundle is not None for f in bundle.catalog.features}

    shadow = ShadowPolicy(
        engine, decisions.metrics.registry, sample=settings.shadow_sample, features=features
    )
    try:
        await reloader.start()
    except TierError as exc:  # a broken candidate stops the start-up, naming where it came from
        raise PolicyError(f"TIERGATE_SHADOW_POLICIES={settings.shadow_policies}: {exc.message}") from exc
    decisions.shadow = shadow
    log.info("shadow_policies", directory=str(settings.shadow_policies), revision=engine.revision)
    return reloader


def _reloaded(app: web.Application, revision: str) -> None:
    app[METRICS].reloads.labels("ok").inc()
    app[DECISIONS].rewarm()  # answers of the previous revision go; the recent ones are re-decided
    log.info("policy_reloaded", revision=revision)


def run(settings: SidecarSettings) -> None:
    """Serve until interrupted (blocking); binds TIERGATE_SIDECAR_HOST:TIERGATE_SIDECAR_PORT first,
    then the authz-only listener when TIERGATE_AUTHZ_HOST is set."""
    app = create_app(settings)
    listeners = [
        Listener(
            settings.sidecar_host,
            settings.sidecar_port,
            "TIERGATE_SIDECAR_HOST",
            "TIERGATE_SIDECAR_PORT",
            "main",
        )
    ]
    if settings.authz_host is not None:
        app[AUTHZ_LISTENER_PORTS] = frozenset({settings.authz_port})
        listeners.append(
            Listener(
                settings.authz_host,
                settings.authz_port,
                "TIERGATE_AUTHZ_HOST",
                "TIERGATE_AUTHZ_PORT",
                "authz",
            )
        )
    if settings.diagnostics_host is not None:
        app[DIAGNOSTICS_LISTENER_PORTS] = frozenset({settings.diagnostics_port})
        listeners.append(
            Listener(
                settings.diagnostics_host,
                settings.diagnostics_port,
                "TIERGATE_DIAGNOSTICS_HOST",
                "TIERGATE_DIAGNOSTICS_PORT",
                "diagnostics",
            )
        )
    loop_factory = uvloop.new_event_loop if settings.event_loop == "uvloop" else None
    serve(
        app,
        listeners,
        process="sidecar",
        bounds=settings.listener_bounds,
        hits=app[BOUND_HITS],
        loop_factory=loop_factory,
        # The main port answers plain checks on the raw path, everything else on aiohttp (ADR 39).
        fronts={"main": front(lambda: app[DECISIONS].decide_json, settings.listener_bounds, app[BOUND_HITS])},
    )
