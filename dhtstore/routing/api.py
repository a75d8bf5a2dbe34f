"""The routing module's presentation tier: iterative lookups over the network.

``Router`` is what the node uses: every Protocol of the algorithm packages
(``dht.KadClient``, ``FindPeerDHT``, ``ValueDHT``, ``FeaturePeersDHT``,
``ipfs.FindProvidersDHT``, ``ProvideDHT``), so the node calls the free functions of
those packages and they take the router's fast path. Each lookup reports its cost as a
``LookupStats`` to the ``on_lookup`` callback given to the router.

A lookup that finds nothing raises a ``RoutingError``: ``NoPeersError`` (nowhere to
start), ``NotFound``, ``QuorumFailed`` or ``LookupTimeout`` (defined with the generic
algorithms in ``dht.protocols``, which raise them too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .. import amino
from ..dht import (
    FeaturePeersDHT,
    FindPeerDHT,
    LookupTimeout,
    NotFound,
    QuorumFailed,
    RoutingError,
    ValueDHT,
)
from ..ipfs import FindProvidersDHT, ProvideDHT
from ..types import PeerInfo


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
    timed_out: bool = False  # the lookup's time limit ended it
    rounds: int = 0  # the longest chain of requests each sent on a reply (one-hop: 1)


LookupObserver = Callable[[LookupStats], None]


@runtime_checkable
class Router(FindPeerDHT, ValueDHT, FeaturePeersDHT, FindProvidersDHT, ProvideDHT, Protocol):
    """Every DHT operation over the network. Implemented by ``router.KademliaRouter``:

    - ``find_closest_peers(key, n, timeout=None) -> list[PeerInfo]`` (the n closest that answered)
    - ``request(peer, message)``, ``send(peer, message)``: one message to one peer
    - ``validator``: which value records are valid, and which is best
    - ``find_peer(peer_id, timeout=None) -> PeerInfo``
    - ``get_value(key, quorum=0, timeout=None) -> Record`` (with the stale-holder update)
    - ``set_value(key, value) -> int`` (peers that accepted)
    - ``find_providers(multihash, count, timeout=None) -> list[PeerInfo]``
    - ``provide(provider: PeerInfo, multihash) -> int`` (peers it was sent to)
    - ``find_feature_peers(feature, n) -> list[PeerInfo]``
    """

    async def find_closest_peers(
        self, key: bytes, n: int = amino.BUCKET_SIZE, *, timeout: float | None = None
    ) -> list[PeerInfo]:
        """The ``n`` peers closest to SHA-256(``key``) that answered, closest first;
        LookupTimeout after ``timeout`` s, carrying the closest that answered by then."""
        ...


__all__ = [
    "LookupObserver",
    "LookupStats",
    "LookupTimeout",
    "NoPeersError",
    "NotFound",
    "QuorumFailed",
    "Router",
    "RoutingError",
]
