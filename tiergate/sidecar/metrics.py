"""The sidecar's Prometheus metrics, on a registry of its own (one per app, so tests don't collide).

The decision path only adds to plain integers (`DecisionCounts`); they become Prometheus
samples when /metrics is scraped, so a decision pays no prometheus-client call.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tiergate.sidecar.replica.damage import ReplicaDamage
    from tiergate.sidecar.replica.follower import FollowerStatus
    from tiergate.sidecar.replica.license_source import LicenseSource
    from tiergate.sidecar.usage.holds import Holds
    from tiergate.sidecar.usage.outbox import Outbox

DECISION_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3, 6.4e-3, 0.0128, 0.05)
_BUCKET_LABELS = (*(repr(b) for b in DECISION_BUCKETS), "+Inf")  # Prometheus' `le` spelling


class DecisionCounts(Collector):
    """Decisions by reason and outcome, cache hits and misses, and the decision-time histogram."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.rematerialised = 0
        self.by_outcome: dict[tuple[str, bool], int] = {}
        self.buckets = [0] * (len(DECISION_BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0

    def count(self, reason: str, allow: bool, seconds: float) -> None:
        key = (reason, allow)
        self.by_outcome[key] = self.by_outcome.get(key, 0) + 1
        self.buckets[bisect.bisect_left(DECISION_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        decisions = CounterMetricFamily(
            "tiergate_decisions", "Decisions answered, by reason and outcome.", labels=["reason", "allow"]
        )
        for (reason, allow), value in sorted(self.by_outcome.items()):
            decisions.add_metric([reason, "true" if allow else "false"], value)
        yield decisions
        cache = CounterMetricFamily("tiergate_decision_cache", "Decision cache lookups.", labels=["result"])
        cache.add_metric(["hit"], self.hits)
        cache.add_metric(["miss"], self.misses)
        yield cache
        yield CounterMetricFamily(
            "tiergate_decisions_rematerialised",
            "Answers re-decided in the background after a feed batch dropped them.",
            value=self.rematerialised,
        )
        cumulative, total = [], 0
        for label, count in zip(_BUCKET_LABELS, self.buckets, strict=True):
            total += count
            cumulative.append((label, total))
        yield HistogramMetricFamily(
            "tiergate_decision_seconds",
            "Time to produce one decision inside the sidecar (replica lookup, cache, engine).",
            buckets=cumulative,
            sum_value=self.seconds,
        )


class SidecarMetrics:
    def __init__(self, replica_age: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = DecisionCounts()
        self.registry.register(self.decisions)
        self.decision_records_dropped = Counter(
            "tiergate_decision_records_dropped",
            "Deny records dropped before they reached the daemon (the shipping queue was full).",
            registry=self.registry,
        )
        self.engine_errors = Counter(
            "tiergate_engine_errors",
            "Policy evaluations that failed (answered as a policy_error deny).",
            ["kind"],
            registry=self.registry,
        )
        self.authz = Counter(
            "tiergate_authz",
            "Ingress hook answers (/v1/authz and gRPC ext_authz), by HTTP status and reason.",
            ["status", "reason"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "tiergate_policy_reloads",
            "Policy and catalog reloads, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.replica_age = Gauge(
            "tiergate_replica_age_seconds",
            "How far the replica may be behind Stripe: following a daemon, seconds since its last "
            "answer (monotonic) plus the lag it reported; static mode, since data_as_of.",
            registry=self.registry,
        )
        self.replica_age.set_function(replica_age)

    def watch_follower(self, status: FollowerStatus) -> None:
        self.registry.register(_FollowerCollector(status))

    def watch_lag(self, contact_age: Callable[[], float | None], daemon_lag: Callable[[], float]) -> None:
        """The two parts of the replica's age, each on its own."""
        contact = Gauge(
            "tiergate_replica_contact_age_seconds",
            "Seconds since the sync daemon last answered (monotonic; 0 before the first answer).",
            registry=self.registry,
        )
        contact.set_function(lambda: contact_age() or 0.0)
        lag = Gauge(
            "tiergate_daemon_lag_seconds",
            "How far the daemon's own mirror may be behind Stripe, as its last answer said.",
            registry=self.registry,
        )
        lag.set_function(daemon_lag)

    def watch_damage(self, damage: ReplicaDamage) -> None:
        self.registry.register(_DamageCollector(damage))

    def watch_license(self, source: LicenseSource) -> None:
        self.registry.register(_LicenseCollector(source))

    def watch_outbox(self, outbox: Outbox) -> None:
        """Usage delivery's health, read from the outbox at each scrape."""
        backlog = Gauge(
            "tiergate_usage_backlog",
            "Accepted usage events not yet delivered to the daemon.",
            registry=self.registry,
        )
        backlog.set_function(lambda: float(outbox.backlog))
        oldest = Gauge(
            "tiergate_usage_oldest_undelivered_seconds",
            "Age of the oldest accepted usage event not yet delivered (0 when none).",
            registry=self.registry,
        )
        oldest.set_function(outbox.oldest_age)
        quarantined = Gauge(
            "tiergate_usage_quarantined",
            "Usage events set aside because no delivery could carry them (see tiergate usage quarantine).",
            registry=self.registry,
        )
        quarantined.set_function(lambda: float(outbox.quarantined))

    def watch_holds(self, holds: Holds) -> None:
        self.registry.register(_HoldsCollector(holds))


class _HoldsCollector(Collector):
    """The holds, read at each scrape: how many are active, how they ended, failed expiry sweeps."""

    def __init__(self, holds: Holds) -> None:
        self.holds = holds

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        active = GaugeMetricFamily("tiergate_holds_active", "Holds counting against limits now.")
        active.add_metric([], self.holds.active)
        yield active
        created = CounterMetricFamily("tiergate_holds_created", "Holds created (replays not counted).")
        created.add_metric([], self.holds.created)
        yield created
        ended = CounterMetricFamily(
            "tiergate_holds_ended", "Holds ended, by how: settled, released, expired.", labels=["state"]
        )
        for state, count in sorted(self.holds.ended.items()):
            ended.add_metric([state], count)
        yield ended
        failures = CounterMetricFamily(
            "tiergate_holds_sweep_failures", "Expiry sweeps that could not commit (retried each second)."
        )
        failures.add_metric([], self.holds.sweep_failures)
        yield failures


class _FollowerCollector(Collector):
    """The follower's state, read at each scrape: a dead or failing follower is never silent."""

    def __init__(self, status: FollowerStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        connected = GaugeMetricFamily(
            "tiergate_follower_connected", "1 while the last exchange with the sync daemon succeeded."
        )
        connected.add_metric([], 1.0 if self.status.connected else 0.0)
        failures = CounterMetricFamily(
            "tiergate_follower_failures",
            "Follower steps that failed, by where: daemon (unreachable, bad answer) or replica (local disk, lock).",
            labels=["kind"],
        )
        for kind, count in self.status.failures.items():
            failures.add_metric([kind], float(count))
        failing = GaugeMetricFamily(
            "tiergate_follower_consecutive_failures", "Failed follower steps since the last success."
        )
        failing.add_metric([], float(self.status.consecutive_failures))
        full = GaugeMetricFamily(
            "tiergate_replica_disk_full",
            "1 while the replica cannot be written because its volume is full (answers come from memory).",
        )
        full.add_metric([], 1.0 if self.status.disk_full else 0.0)
        yield from (connected, failures, failing, full)


class _DamageCollector(Collector):
    """A damaged replica file, read at each scrape: found, being replaced, replaced."""

    def __init__(self, damage: ReplicaDamage) -> None:
        self.damage = damage

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "tiergate_replica_damaged",
            "1 from the moment the replica file is found damaged until a new snapshot is loaded.",
            value=1.0 if self.damage.active else 0.0,
        )
        yield CounterMetricFamily(
            "tiergate_replica_damage_detected",
            "Damaged replica files found (at start by quick_check, or by a read or write at run time).",
            value=float(self.damage.detections),
        )
        yield CounterMetricFamily(
            "tiergate_replica_damage_recovered",
            "Replicas downloaded again and loaded after damage found at run time.",
            value=float(self.damage.recoveries),
        )


class _LicenseCollector(Collector):
    """The signed license, read at each scrape: its dates, refusals, and a clock behind it."""

    def __init__(self, source: LicenseSource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status, license = self.source.status, self.source.status.license
        yield GaugeMetricFamily(
            "tiergate_license_not_after_timestamp_seconds",
            "When the license in force reaches its not-after date (Unix seconds; grace follows).",
            value=float(license.claims.exp) if license else 0.0,
        )
        yield GaugeMetricFamily(
            "tiergate_license_grace_until_timestamp_seconds",
            "When the license in force stops allowing anything (Unix seconds).",
            value=license.grace_until.timestamp() if license else 0.0,
        )
        yield GaugeMetricFamily(
            "tiergate_license_refused",
            "1 while the license file on disk does not verify and the last good license stays in force.",
            value=1.0 if status.last_error is not None else 0.0,
        )
        yield CounterMetricFamily(
            "tiergate_license_refusals", "License files refused (at run time).", value=float(status.refusals)
        )
        yield CounterMetricFamily(
            "tiergate_license_loads",
            "Licenses verified and installed (the first, then renewals).",
            value=float(status.loads),
        )
        yield GaugeMetricFamily(
            "tiergate_license_clock_behind",
            "1 while the system clock is earlier than the license's issue time.",
            value=1.0 if status.clock_behind else 0.0,
        )
