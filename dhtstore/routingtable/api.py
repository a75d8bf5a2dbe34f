"""The routing-table module's presentation tier: who we know, ordered by XOR distance.

A table holds DHT *servers* only; which peers qualify (identify says they serve the
kad protocol, the lookup check passes) is the node's decision, not the table's. The
table decides where a peer fits: k-buckets by common prefix length with our own key,
seniority (a full bucket keeps its live peers), an optional IP-diversity limit. The
diversity limit counts the IP the peer was really seen at (``seen_from``: the
connection's remote address, as go's rtPeerIPGroupFilter counts its connections'
remote addresses), never the addresses it claims: claiming costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..kadkey import Key
from ..peerid import PeerId
from ..types import PeerInfo


@dataclass(frozen=True)
class KeyShards:
    """Some of the ``2**bits`` shards of the keyspace: shard s is every Kademlia key
    whose first ``bits`` bits are s. The slice of the crawl one head of a shared store
    does (``rtrefresh.crawlshards``)."""

    bits: int
    shards: frozenset[int]

    def shard_of(self, key: int) -> int:
        return key >> (256 - self.bits)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and key >> (256 - self.bits) in self.shards

    def ranges(self) -> list[tuple[int, int]]:
        """Each shard's first and last key, in key order."""
        width = 256 - self.bits
        return [(s << width, ((s + 1) << width) - 1) for s in sorted(self.shards)]


@runtime_checkable
class RoutingTable(Protocol):
    @property
    def local_key(self) -> Key: ...

    def local_closest_peers(self, key: Key, n: int) -> list[PeerInfo]:
        """The ``n`` known peers closest to ``key``, closest first (exact)."""
        ...

    def add(self, peer: PeerInfo, now: float, *, seen_from: bytes | None = None) -> bool:
        """Insert or refresh ``peer``; False when it does not fit (full bucket, IP limit).
        ``seen_from``: the binary multiaddr we are connected to it at, whose IP group the
        diversity limit counts; without it (a peer we are not connected to: the
        simulation, tests) its claimed addresses are counted instead."""
        ...

    def remove(self, peer_id: PeerId) -> bool:
        """Drop the peer; False when it was not in the table."""
        ...

    def mark_useful(self, peer_id: PeerId, now: float) -> None:
        """The peer answered a query usefully: it stays, and counts as live."""
        ...

    def mark_failed(self, peer_id: PeerId) -> None:
        """The peer failed a liveness check: the next newcomer to its bucket replaces it."""
        ...

    def last_useful(self, peer_id: PeerId) -> float | None:
        """When the peer last proved useful (the clock given to ``add``/``mark_useful``)."""
        ...

    def get(self, peer_id: PeerId) -> PeerInfo | None: ...

    def peers(self) -> list[PeerInfo]: ...

    def __len__(self) -> int: ...

    def __contains__(self, peer_id: object) -> bool: ...


@runtime_checkable
class PrefixCounts(Protocol):
    """How many servers a table holds under a prefix of the keyspace: exact for a table
    of the whole network (the sweep sizes its regions with it)."""

    def __len__(self) -> int: ...

    def count_under_prefix(self, bits: int, length: int) -> int:
        """Peers whose Kademlia key starts with the ``length`` bits ``bits`` (0 <= bits <
        2**length; length 0 is every peer): a range of the sorted key index."""
        ...


@runtime_checkable
class NetworkTable(RoutingTable, PrefixCounts, Protocol):
    """A table of the whole network (``fulltable.FullTable``), kept by a crawler.

    Every DHT server found fits (no buckets); ``mark_failed`` counts consecutive
    failures and the peer leaves at ``max_failures``. Crawl times are the wall clock's
    (epoch seconds), as stored."""

    max_failures: int

    def failures(self, peer_id: PeerId) -> int:
        """Consecutive failed contacts of the peer (0 for an unknown one)."""
        ...

    def crawl_queue(self, crawled_before: float, limit: int, within: KeyShards | None = None) -> list[PeerInfo]:
        """Up to ``limit`` peers not crawled since ``crawled_before`` (only those in the
        shards ``within``, when given): failing ones first, then never crawled, then
        the oldest crawled."""
        ...

    def next_crawl_due(self, within: KeyShards | None = None) -> float:
        """When the least recently crawled peer (of the shards ``within``) was crawled
        (-inf: one never was; inf: there is none)."""
        ...

    def mark_crawled(self, peer_id: PeerId) -> None:
        """The crawler visited the peer now (every request of the visit answered)."""
        ...

    def crawled_since(self, since: float) -> int:
        """How many peers were crawled at or after ``since``."""
        ...

    def note_identify(self, peer_id: PeerId, agent: str, protocols: tuple[str, ...]) -> None:
        """What identify said about a peer of the table, for the census."""
        ...
