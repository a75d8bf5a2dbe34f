"""The routing module's presentation tier: iterative lookups over the network.

An implementation (``routing.router.KademliaRouter``) implements the algorithm-package
Protocols (``dht.DHT``, ``dht.FindPeerDHT``, ``dht.ValueDHT``,
``ipfs.FindProvidersDHT``, ``ipfs.ProvideDHT``), so the free functions of those
packages take its fast path. Each lookup reports its cost as a ``LookupStats`` to the
``on_lookup`` callback given to the router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..network.api import PeerInfo


class RoutingError(Exception):
    """A lookup that could not run or found nothing usable."""


class NoPeersError(RoutingError):
    """The routing table is empty: a lookup has nowhere to start."""

    def __init__(self) -> None:
        super().__init__("no peers in routing table")


@dataclass(frozen=True, slots=True)
class LookupStats:
    """What one lookup cost. ``hops`` is the longest chain of requests needed to learn
    the peers of the answer (a peer from our own table is 0 hops away, one named by it 1,
    …); ``skipped_peers`` counts the closer-peer entries refused as bad input."""

    operation: str
    messages_sent: int
    peers_contacted: int
    peers_responded: int
    peers_failed: int
    hops: int
    duration: float
    skipped_peers: int
    completed: bool  # False when a stop rule other than termination ended it early


class PeerReporter(Protocol):
    """Told about each peer a lookup contacted, so the node can update its table."""

    def __call__(self, peer: PeerInfo, responded: bool) -> None: ...


LookupObserver = Callable[[LookupStats], None]
