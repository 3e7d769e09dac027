"""The leases' Prometheus samples, read from their plain counters when /metrics is scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from tiergate.sidecar.leases.holder import LATENCY_BUCKETS, Leases


class LeaseMetrics(Collector):
    def __init__(self, leases: Leases) -> None:
        self.leases = leases

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        held, units = self.leases.held()
        stats = self.leases.stats
        yield GaugeMetricFamily("tiergate_leases_held", "Quota leases this sidecar holds.", value=held)
        yield GaugeMetricFamily(
            "tiergate_lease_units", "Units this sidecar's leases can still spend.", value=units
        )
        yield CounterMetricFamily(
            "tiergate_lease_quota_unavailable",
            "Reserves of leased metrics denied quota_unavailable: no unit held, none came in time.",
            value=stats.unavailable,
        )
        yield CounterMetricFamily(
            "tiergate_lease_waits", "Reserves that waited on a lease refill.", value=stats.waits
        )
        yield CounterMetricFamily(
            "tiergate_lease_refill_failures", "Lease exchanges with no answer from the daemon.",
            value=stats.refill_failures,
        )  # fmt: skip
        cumulative, total = [], 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), stats.refill_seconds, strict=True):
            total += count
            cumulative.append((bound, total))
        histogram = HistogramMetricFamily(
            "tiergate_lease_refill_seconds", "Time from asking the daemon for lease units to its answer."
        )
        histogram.add_metric([], cumulative, sum_value=stats.refill_seconds_sum)
        yield histogram
