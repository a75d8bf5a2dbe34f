"""What a DHT can do, and how a lookup fails.

Like Go's ``io/fs``: ``KadClient`` is the minimal interface of the free functions
(``fs.FS``): the closest peers to a key, and a way to send a Kademlia request to a peer.
That is all the generic algorithms need, so every free function runs on any
``KadClient``. ``FindPeerDHT``, ``ValueDHT``, ``FeaturePeersDHT`` (and
``ipfs.FindProvidersDHT``, ``ipfs.ProvideDHT``) are the optional extensions
(``fs.ReadFileFS``): a free function calls the method when the object has it.

``DHT`` alone (``find_closest_peers``) is what a caller needs that only places or
finds peers (the reprovider, routing-table upkeep).

A lookup that finds nothing raises one of the ``RoutingError`` outcomes below, modelled
on rust-libp2p kad's ``GetRecordError { NotFound, QuorumFailed, Timeout }``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..network.api import KadMessenger
from ..peerid import PeerId
from ..records.api import Validator
from ..types import PeerInfo, Record


class RoutingError(Exception):
    """A lookup that could not run or found nothing usable."""


class NotFound(RoutingError):
    """The lookup ran to its end and no peer had what was asked for."""

    def __init__(self, key: bytes, what: str = "record") -> None:
        super().__init__(f"no {what} found")
        self.key = key


class QuorumFailed(RoutingError):
    """The lookup ran to its end with fewer valid records than the quorum asked for.
    ``records`` are the valid ones received, one per peer that sent one."""

    def __init__(self, key: bytes, records: tuple[Record, ...], quorum: int) -> None:
        super().__init__(f"{len(records)} valid records, quorum {quorum}")
        self.key = key
        self.records = records
        self.quorum = quorum


class LookupTimeout(RoutingError):
    """The lookup's time limit passed before it ended. It carries what was learned:
    ``records``, the valid records received (``get_value``); ``peers``, the providers
    found (``find_providers``) or the closest peers that answered (``find_closest_peers``)."""

    def __init__(
        self,
        key: bytes,
        timeout: float | None,
        *,
        records: tuple[Record, ...] = (),
        peers: tuple[PeerInfo, ...] = (),
    ) -> None:
        super().__init__("timed out" if timeout is None else f"timed out after {timeout:g} s")
        self.key = key
        self.timeout = timeout
        self.records = records
        self.peers = peers


@runtime_checkable
class DHT(Protocol):
    async def find_closest_peers(self, key: bytes, n: int) -> list[PeerInfo]:
        """The ``n`` peers closest to SHA-256(``key``) that answered, closest first.
        ``key`` is the preimage, exactly as sent in FIND_NODE."""
        ...


@runtime_checkable
class KadClient(DHT, KadMessenger, Protocol):
    """The closest peers, and one request (``request``) or message (``send``) to any
    of them: what every generic algorithm of ``dht`` and ``ipfs`` runs on."""


@runtime_checkable
class RecordClient(KadClient, Protocol):
    """A ``KadClient`` that knows which value records are valid and which is best."""

    @property
    def validator(self) -> Validator: ...


@runtime_checkable
class FindPeerDHT(KadClient, Protocol):
    async def find_peer(self, peer_id: PeerId, *, timeout: float | None = None) -> PeerInfo:
        """The peer with its addresses; NotFound, or LookupTimeout after ``timeout`` s."""
        ...


@runtime_checkable
class ValueDHT(RecordClient, Protocol):
    async def get_value(self, key: bytes, quorum: int = 0, *, timeout: float | None = None) -> Record:
        """The best valid record; NotFound, QuorumFailed, or LookupTimeout."""
        ...

    async def set_value(self, key: bytes, value: bytes) -> int:
        """Store ``value`` on the closest peers; returns how many accepted it."""
        ...


@runtime_checkable
class FeaturePeersDHT(KadClient, Protocol):
    async def find_feature_peers(self, feature: str | bytes, n: int) -> list[PeerInfo]: ...
