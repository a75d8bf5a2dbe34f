"""Prometheus metrics of the provide list and the sweep.

Pass ``prometheus_client.REGISTRY`` to export them with the node's other metrics; by
default they go to a private registry (so several reproviders, as in tests, never clash).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .api import ProvideStatus, VisitReport


class ProvideMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.keys = Gauge("dhtstore_provide_keys", "Keys in the provide list", registry=r)
        self.provided = Gauge(
            "dhtstore_provide_provided_within_interval", "Keys provided less than one reprovide interval ago", registry=r
        )
        self.overdue = Gauge("dhtstore_provide_overdue_keys", "Keys whose (re)provide time has passed", registry=r)
        self.failing = Gauge("dhtstore_provide_failing_keys", "Keys whose last attempts all failed", registry=r)
        self.regions = Gauge("dhtstore_provide_regions", "Keyspace regions in the reprovide schedule", registry=r)
        self.current_region = Gauge(
            "dhtstore_provide_current_region_info",
            "1 for the slice being provided now (label: its prefix bits)",
            ["prefix"],
            registry=r,
        )
        self.cycle_end = Gauge(
            "dhtstore_provide_expected_cycle_end_seconds", "When every key will have been provided once more (epoch)", registry=r
        )
        self.behind = Gauge("dhtstore_provide_falling_behind", "1 if the node cannot keep up with the interval", registry=r)
        self.lookups = Counter("dhtstore_provide_lookups", "find_closest_peers lookups made by the provider", registry=r)
        self.messages = Counter("dhtstore_provide_messages", "ADD_PROVIDER messages sent", registry=r)
        self.keys_provided = Counter("dhtstore_provide_keys_provided", "Keys (re)provided to enough peers", registry=r)
        self.keys_unconfirmed = Counter(
            "dhtstore_provide_keys_unconfirmed",
            "Key provide attempts sent to servers of which too few confirmed them (sent, not unsent)",
            registry=r,
        )
        self.keys_deferred = Counter(
            "dhtstore_provide_keys_deferred",
            "Unconfirmed keys whose sends for the cycle were used up (max_sends_per_cycle), left to their next turn",
            registry=r,
        )
        self.peers_unconfirmed = Counter(
            "dhtstore_provide_peers_unconfirmed", "Servers that took ADD_PROVIDERs but did not confirm them", registry=r
        )
        self.keys_failed = Counter("dhtstore_provide_keys_failed", "Key provide attempts that reached no server", registry=r)
        self.visits = Counter("dhtstore_provide_region_visits", "Slices visited by the sweep", registry=r)

    def region_started(self, label: str) -> None:
        self.current_region.clear()
        self.current_region.labels(prefix=label).set(1)

    def region_finished(self, report: VisitReport) -> None:
        self.current_region.clear()
        self.visits.inc()
        self.lookups.inc(report.lookups)
        self.messages.inc(report.messages)
        self.keys_provided.inc(report.provided)
        self.keys_unconfirmed.inc(report.unconfirmed)
        self.keys_deferred.inc(report.deferred)
        self.peers_unconfirmed.inc(report.peers_unconfirmed)
        self.keys_failed.inc(report.failed)

    def update(self, status: ProvideStatus) -> None:
        self.keys.set(status.keys)
        self.provided.set(status.provided_within_interval)
        self.overdue.set(status.overdue)
        self.failing.set(status.failing)
        self.regions.set(status.regions)
        self.cycle_end.set(status.expected_cycle_end.timestamp() if status.expected_cycle_end else 0)
        self.behind.set(1 if status.falling_behind else 0)
