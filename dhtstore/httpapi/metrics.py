"""The HTTP routing server's counters as Prometheus metrics, read at scrape time like
``dhtstore.metrics.NodeCollector`` (same ``peer_id`` and ``identity`` labels)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .api import HttpCounters


class HttpCollector(Collector):
    def __init__(self, counters: HttpCounters, peer_id: str, identity: str):
        self._counters = counters
        self._who = [peer_id, identity]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "dhtstore_http_requests",
            "Delegated routing HTTP requests, by endpoint and outcome",
            labels=["peer_id", "identity", "endpoint", "outcome"],
        )
        for (endpoint, outcome), n in sorted(self._counters.requests().items()):
            requests.add_metric([*self._who, endpoint, outcome], n)
        yield requests
        lookups = GaugeMetricFamily(
            "dhtstore_http_lookups_in_flight", "DHT lookups started by HTTP requests, running now", labels=["peer_id", "identity"]
        )
        lookups.add_metric(self._who, self._counters.lookups_in_flight)
        yield lookups
