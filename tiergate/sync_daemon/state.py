"""Typed application keys: every resource the daemon's handlers share, opened by a cleanup context."""

from __future__ import annotations

from aiohttp import web

from tiergate.catalog import Catalog
from tiergate.sync_daemon.leader import Leader
from tiergate.sync_daemon.metrics import DaemonMetrics
from tiergate.sync_daemon.mirror.store import Mirror
from tiergate.sync_daemon.settings import DaemonSettings
from tiergate.sync_daemon.stripe_sync.apply import EventApplier
from tiergate.sync_daemon.stripe_sync.reconcile import Reconciler
from tiergate.sync_daemon.stripe_sync.source import BillingSource
from tiergate.sync_daemon.support.fleet import Fleet

SETTINGS = web.AppKey("settings", DaemonSettings)
CATALOG = web.AppKey("catalog", Catalog)  # loaded once, before the server binds
MIRROR = web.AppKey("mirror", Mirror)
BILLING = web.AppKey("billing", BillingSource)
APPLIER = web.AppKey("applier", EventApplier)
METRICS = web.AppKey("metrics", DaemonMetrics)
RECONCILER = web.AppKey("reconciler", Reconciler)
LEADER = web.AppKey("leader", Leader)
FLEET = web.AppKey("fleet", Fleet)  # the sidecars following this daemon's feed
