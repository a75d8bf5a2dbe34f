"""Prometheus metrics for a running node, served on ``--metrics HOST:PORT``.

Counters the node already keeps (requests by type and outcome, host and server
refusals, lookups) are read at scrape time by a collector, so no second set of
counters has to be kept in step. Lookup durations go into a histogram as lookups end.
Every sample carries the peer id and the identity name (``--identity``), so the
processes sharing one store tell themselves apart. Store sizes are the node's
``store_rows``, which it refreshes periodically (reading them needs the event loop;
scrapes run in prometheus_client's thread); ``dhtstore_store_up`` is 0 while the store
is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .node import Node


class NodeCollector(Collector):
    def __init__(self, node: Node):
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        node = self.node
        who = (str(node.peer_id), node.options.identity_name)  # several identities may share a store
        table = GaugeMetricFamily("dhtstore_routing_table_peers", "Peers in the routing table", labels=["peer_id", "identity"])
        table.add_metric([*who], len(node.table))
        yield table
        connected = GaugeMetricFamily("dhtstore_connected_peers", "Open libp2p connections", labels=["peer_id", "identity"])
        connected.add_metric([*who], len(node.host.connected_peers()))
        yield connected
        requests = CounterMetricFamily(
            "dhtstore_requests", "Kademlia requests served, by type and outcome", labels=["peer_id", "identity", "type", "outcome"]
        )
        for (kind, outcome), n in sorted(node.handler.counters.items()):
            requests.add_metric([*who, kind, outcome], n)
        yield requests
        refused = CounterMetricFamily(
            "dhtstore_network_events", "Host and kad-server events (refusals, failures)", labels=["peer_id", "identity", "event"]
        )
        for event, n in sorted({**node.host.stats, **node.kadserver.stats}.items()):
            refused.add_metric([*who, event], n)
        yield refused
        sizes = GaugeMetricFamily("dhtstore_store_rows", "Rows in the store, by table", labels=["peer_id", "identity", "table"])
        for name, n in sorted(node.store_rows.items()):
            sizes.add_metric([*who, name], n)
        yield sizes
        store = node.store_state()
        if store != "memory":
            up = GaugeMetricFamily("dhtstore_store_up", "1 while the store answers, 0 while it is down", labels=["peer_id", "identity"])
            up.add_metric([*who], 1 if store == "up" else 0)
            yield up


class Metrics:
    def __init__(self, node: Node):
        self.registry = CollectorRegistry()
        self.collector = NodeCollector(node)
        self.registry.register(self.collector)
        self.lookup_seconds = Histogram(
            "dhtstore_lookup_seconds",
            "Duration of DHT lookups, by operation",
            ["operation"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
