"""Typed application keys: every resource the daemon's handlers share, opened by a cleanup context."""

from __future__ import annotations

from aiohttp import web

from sync_daemon.metrics import DaemonMetrics
from sync_daemon.mirror.store import Mirror
from sync_daemon.settings import DaemonSettings
from sync_daemon.stripe_sync.apply import EventApplier
from sync_daemon.stripe_sync.reconcile import Reconciler
from sync_daemon.stripe_sync.source import BillingSource
from tiergate.catalog import Catalog

SETTINGS = web.AppKey("settings", DaemonSettings)
CATALOG = web.AppKey("catalog", Catalog)  # loaded once, before the server binds
MIRROR = web.AppKey("mirror", Mirror)
BILLING = web.AppKey("billing", BillingSource)
APPLIER = web.AppKey("applier", EventApplier)
METRICS = web.AppKey("metrics", DaemonMetrics)
RECONCILER = web.AppKey("reconciler", Reconciler)
