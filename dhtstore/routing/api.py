"""The routing module's presentation tier: iterative lookups over the network.

``Router`` is the sum of the algorithm packages' Protocols (``dht.DHT``,
``FindPeerDHT``, ``ValueDHT``, ``FeaturePeersDHT``, ``ipfs.FindProvidersDHT``,
``ProvideDHT``), so the free functions of those packages take its fast path. Each
lookup reports its cost as a ``LookupStats`` to the ``on_lookup`` callback given to
the router, and each peer it contacted to the ``reporter`` (a ``PeerReporter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from ..dht import FeaturePeersDHT, FindPeerDHT, ValueDHT
from ..ipfs import FindProvidersDHT, ProvideDHT
from ..types import PeerInfo


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


@runtime_checkable
class Router(FindPeerDHT, ValueDHT, FeaturePeersDHT, FindProvidersDHT, ProvideDHT, Protocol):
    """Every DHT operation over the network: what the node calls. Implemented by
    ``router.KademliaRouter``:

    - ``find_closest_peers(key: bytes, n) -> list[PeerInfo]`` (the n closest that answered)
    - ``find_peer(peer_id) -> PeerInfo | None``
    - ``get_value(key, quorum=0) -> Record | None`` (with entry correction)
    - ``set_value(key, value) -> int`` (peers that accepted)
    - ``find_providers(multihash, count) -> list[PeerInfo]``
    - ``provide(provider: PeerInfo, multihash) -> int`` (peers it was sent to)
    - ``find_feature_peers(feature, n) -> list[PeerInfo]``
    """
