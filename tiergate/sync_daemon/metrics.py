"""The daemon's Prometheus metrics, on a registry of its own (one per app, so tests don't collide)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class DaemonMetrics:
    def __init__(self, feed_seq: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.webhooks = Counter(
            "tiergate_webhooks",
            "Stripe webhooks received, by event type (other = a type the mirror does not use) and outcome.",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.webhooks_refused = Counter(
            "tiergate_webhooks_refused",
            "Stripe webhooks answered 400 and not stored, by reason (signature, shape, created, "
            "future, field).",
            ["reason"],
            registry=self.registry,
        )
        self.drift = Counter(
            "tiergate_mirror_drift",
            "Mirror fields the reconciler found different from Stripe and repaired.",
            ["field"],
            registry=self.registry,
        )
        self.unmapped_prices = Counter(
            "tiergate_unmapped_prices",
            "Subscription states applied whose price maps to no catalog tier.",
            registry=self.registry,
        )
        self.reconciles = Counter(
            "tiergate_reconcile_runs", "Reconciliation runs, by outcome.", ["outcome"], registry=self.registry
        )
        self.lease_exchanges = Counter(
            "tiergate_lease_exchanges",
            "Quota lease exchanges with sidecars, by outcome (granted, none_free, renewed, release).",
            ["outcome"],
            registry=self.registry,
        )
        self.leases_expired = Counter(
            "tiergate_leases_expired",
            "Quota leases that expired unrenewed (a sidecar killed or cut off) and returned their units.",
            registry=self.registry,
        )
        self.feed_seq = Gauge(
            "tiergate_feed_seq", "The newest sequence number in the change log.", registry=self.registry
        )
        self.feed_seq.set_function(feed_seq)
        self.feed_unnumbered_stale = Gauge(
            "tiergate_feed_unnumbered_stale",
            "Changes committed but still without a feed position after the sweep's threshold, as last "
            "measured (PostgreSQL; a daemon died between its commit and its numbering): the sweep numbers them.",
            registry=self.registry,
        )
        self.mirror_lag = Gauge(
            "tiergate_mirror_lag_seconds",
            "How far the mirror may be behind Stripe: 0 while the latest reconcile succeeded, else "
            "seconds since the last success (sent to sidecars in the feed).",
            registry=self.registry,
        )
        self.leader = Gauge(
            "tiergate_leader",
            "1 on the daemon that runs the scheduled jobs (reconcile, trims, retention), 0 on the others.",
            registry=self.registry,
        )
        self.retention_deleted = Counter(
            "tiergate_retention_deleted",
            "Rows the retention job deleted, by table.",
            ["table"],
            registry=self.registry,
        )
        self.outbound = Counter(
            "tiergate_outbound_webhook_attempts",
            "Outbound webhook delivery attempts, by outcome: delivered, retry, failed (gave up).",
            ["outcome"],
            registry=self.registry,
        )
        # The same counts as data for /v1/status (prometheus counters are awkward to read back).
        self.webhook_tally: Tally[tuple[str, str]] = Tally()

    def count_webhook(self, event_type: str, outcome: str) -> None:
        self.webhooks.labels(event_type, outcome).inc()
        self.webhook_tally[(event_type, outcome)] += 1

    def webhook_summary(self) -> dict[str, dict[str, int]]:
        summary: dict[str, dict[str, int]] = {}
        for (event_type, outcome), n in sorted(self.webhook_tally.items()):
            summary.setdefault(event_type, {})[outcome] = n
        return summary
