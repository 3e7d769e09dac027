"""The sidecar's Prometheus metrics, on a registry of its own (one per app, so tests don't collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sidecar.replica.follower import FollowerStatus
    from sidecar.usage.outbox import Outbox


class SidecarMetrics:
    def __init__(self, replica_age: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "tiergate_decisions",
            "Decisions answered, by reason and outcome.",
            ["reason", "allow"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "tiergate_decision_seconds",
            "Time to produce one decision inside the sidecar (replica lookup, cache, engine).",
            buckets=(
                25e-6,
                50e-6,
                100e-6,
                200e-6,
                400e-6,
                800e-6,
                1.6e-3,
                3.2e-3,
                6.4e-3,
                0.0128,
                0.05,
            ),
            registry=self.registry,
        )
        self.cache = Counter(
            "tiergate_decision_cache", "Decision cache lookups.", ["result"], registry=self.registry
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
            "Seconds since the replica's data was current (data_as_of).",
            registry=self.registry,
        )
        self.replica_age.set_function(replica_age)
        # Children resolved once: label lookups on the hot path cost more than the increment.
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")
        self._decision_children: dict[tuple[str, bool], Counter] = {}

    def watch_follower(self, status: FollowerStatus) -> None:
        self.registry.register(_FollowerCollector(status))

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

    def count_decision(self, reason: str, allow: bool) -> None:
        child = self._decision_children.get((reason, allow))
        if child is None:
            child = self.decisions.labels(reason, "true" if allow else "false")
            self._decision_children[(reason, allow)] = child
        child.inc()


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
        yield from (connected, failures, failing)
