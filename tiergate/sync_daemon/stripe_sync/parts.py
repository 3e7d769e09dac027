"""What webhook intake (apply.py) and reconciliation (reconcile.py) both work with."""

from __future__ import annotations

from dataclasses import dataclass

from tiergate.sync_daemon.metrics import DaemonMetrics
from tiergate.sync_daemon.mirror.store import Mirror
from tiergate.sync_daemon.outbound.delivery import Outbound
from tiergate.sync_daemon.stripe_sync.source import BillingSource
from tiergate.sync_daemon.stripe_sync.translate import Translator


@dataclass
class SyncParts:
    """The mirror written, Stripe read, the translation between them, the metrics, and the
    outbound webhooks each change causes (None: none configured)."""

    mirror: Mirror
    billing: BillingSource
    translator: Translator
    metrics: DaemonMetrics
    outbound: Outbound | None = None  # enqueued in the transaction of the change that causes them
