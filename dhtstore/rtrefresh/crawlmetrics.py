"""Prometheus figures of the full table's crawler: read from its counters at scrape time.

Only counters and the crawl shards held: a scrape runs in prometheus_client's thread,
so it never walks the table (``Crawler.status()``, on the event loop, has the coverage)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .crawler import Crawler


class CrawlerCollector(Collector):
    def __init__(self, crawler: Crawler, peer_id: str, identity: str):
        self._crawler = crawler
        self._who = [peer_id, identity]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counts = dict(self._crawler.counters)
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
            ("dhtstore_crawler_refused", "refused", "Servers that answered but were past the full table's IP diversity limit"),
            ("dhtstore_crawler_seed_visits", "seed_visits", "Visits outside this head's crawl shards, to seed a shard the table knew no peer of"),
        ):
            family = CounterMetricFamily(name, doc, labels=["peer_id", "identity"])
            family.add_metric(self._who, counts.get(key, 0))
            yield family
        shards = self._crawler.shards  # None: not shared, the crawler covers the whole keyspace
        held = GaugeMetricFamily(
            "dhtstore_crawler_shards",
            "Crawl shards of the keyspace this head holds (of 2^bits; all of them when the store is not shared)",
            labels=["peer_id", "identity", "of"],
        )
        held.add_metric([*self._who, str(1 << shards.bits if shards else 1)], len(shards.shards) if shards else 1)
        yield held
