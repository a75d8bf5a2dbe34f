"""Prometheus figures of the full table's crawler: read from its counters at scrape time.

Only counters: a scrape runs in prometheus_client's thread, so it never walks the table
(``Crawler.status()``, on the event loop, has the coverage)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class CrawlerCollector(Collector):
    def __init__(self, counters: Counter[str], peer_id: str, identity: str):
        self._counters = counters
        self._who = [peer_id, identity]

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = dict(self._counters)
        visits = CounterMetricFamily(
            "dhtstore_crawler_visits", "Crawler visits of DHT servers, by outcome", labels=["peer_id", "identity", "outcome"]
        )
        visits.add_metric([*self._who, "answered"], counts.get("visits_answered", 0))
        visits.add_metric([*self._who, "failed"], counts.get("visits_failed", 0))
        yield visits
        for name, key, doc in (
            ("dhtstore_crawler_requests", "requests", "FIND_NODE requests the crawler sent"),
            ("dhtstore_crawler_added", "added", "Servers the crawler added to the full table"),
            ("dhtstore_crawler_removed", "removed", "Servers that left the full table after consecutive failures"),
        ):
            family = CounterMetricFamily(name, doc, labels=["peer_id", "identity"])
            family.add_metric(self._who, counts.get(key, 0))
            yield family
