"""Prometheus metrics for a running node, served on ``--metrics HOST:PORT``.

Counters the node already keeps (requests by type and outcome, host and server
refusals, lookups; a resource limit hit is the event ``limit_<scope>_<resource>``)
are read at scrape time by a collector, so no second set of
counters has to be kept in step. Lookup durations go into a histogram as lookups end.
Every sample carries the peer id and the identity name (``--identity``), so the
processes sharing one store tell themselves apart. Store sizes are the node's
``store_rows``, which it refreshes periodically (reading them needs the event loop;
scrapes run in prometheus_client's thread); ``dhtstore_store_up`` is 0 while the store
is down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class NodeStats:
    """What a node reports at one moment: the figures of the status line and the scrape."""

    peer_id: str
    identity: str
    routing_table: int
    connected_peers: int
    requests: Mapping[tuple[str, str], int]  # (message type, outcome) -> served
    events: Mapping[str, int]  # host and kad-server refusals and failures
    store_rows: Mapping[str, int]  # table -> rows, as last counted
    store: str  # "up", "down" (failed, not answering yet) or "memory"
    resources: Mapping[str, int] = field(default_factory=dict)  # what the host's resource manager holds


class NodeCollector(Collector):
    def __init__(self, stats: Callable[[], NodeStats]):
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats()
        who = (stats.peer_id, stats.identity)  # several identities may share a store
        table = GaugeMetricFamily("dhtstore_routing_table_peers", "Peers in the routing table", labels=["peer_id", "identity"])
        table.add_metric([*who], stats.routing_table)
        yield table
        connected = GaugeMetricFamily("dhtstore_connected_peers", "Open libp2p connections", labels=["peer_id", "identity"])
        connected.add_metric([*who], stats.connected_peers)
        yield connected
        requests = CounterMetricFamily(
            "dhtstore_requests", "Kademlia requests served, by type and outcome", labels=["peer_id", "identity", "type", "outcome"]
        )
        for (kind, outcome), n in sorted(stats.requests.items()):
            requests.add_metric([*who, kind, outcome], n)
        yield requests
        refused = CounterMetricFamily(
            "dhtstore_network_events", "Host and kad-server events (refusals, failures)", labels=["peer_id", "identity", "event"]
        )
        for event, n in sorted(stats.events.items()):
            refused.add_metric([*who, event], n)
        yield refused
        usage = GaugeMetricFamily(
            "dhtstore_resource_usage",
            "What the host's resource manager holds, all scopes (connections, streams, bytes of frames)",
            labels=["peer_id", "identity", "resource"],
        )
        for resource, n in sorted(stats.resources.items()):
            usage.add_metric([*who, resource], n)
        yield usage
        sizes = GaugeMetricFamily("dhtstore_store_rows", "Rows in the store, by table", labels=["peer_id", "identity", "table"])
        for name, n in sorted(stats.store_rows.items()):
            sizes.add_metric([*who, name], n)
        yield sizes
        if stats.store != "memory":
            up = GaugeMetricFamily("dhtstore_store_up", "1 while the store answers, 0 while it is down", labels=["peer_id", "identity"])
            up.add_metric([*who], 1 if stats.store == "up" else 0)
            yield up


class Metrics:
    """The node's registry. ``stats`` is called at scrape time, from prometheus_client's
    thread: it must only read figures the node already keeps."""

    def __init__(self, stats: Callable[[], NodeStats]):
        self.registry = CollectorRegistry()
        self.collector = NodeCollector(stats)
        self.registry.register(self.collector)
        self.lookup_seconds = Histogram(
            "dhtstore_lookup_seconds",
            "Duration of DHT lookups, by operation",
            ["operation"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        # One-hop (the full routing table) answers in 1 round, the iterative lookup in many.
        self.lookup_rounds = Histogram(
            "dhtstore_lookup_rounds",
            "Rounds of requests of DHT lookups (the longest chain of requests each sent on a reply), by operation",
            ["operation"],
            registry=self.registry,
            buckets=(1, 2, 3, 5, 8, 13, 20),
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
