"""What a DHT can do: one required method, and optional richer ones for a faster path.

Like Go's ``io/fs``: ``DHT`` is the minimal interface (``fs.FS``); ``FindPeerDHT``,
``ValueDHT`` and ``FeaturePeersDHT`` are the optional extensions (``fs.ReadFileFS``)
that the free functions of this package look for before running the generic
algorithm on ``find_closest_peers``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..peerid import PeerId
from ..types import PeerInfo, Record


@runtime_checkable
class DHT(Protocol):
    async def find_closest_peers(self, key: bytes, n: int) -> list[PeerInfo]:
        """The ``n`` peers closest to SHA-256(``key``) that answered, closest first.
        ``key`` is the preimage, exactly as sent in FIND_NODE."""
        ...


@runtime_checkable
class FindPeerDHT(DHT, Protocol):
    async def find_peer(self, peer_id: PeerId) -> PeerInfo | None: ...


@runtime_checkable
class ValueDHT(DHT, Protocol):
    async def get_value(self, key: bytes, quorum: int = 0) -> Record | None: ...

    async def set_value(self, key: bytes, value: bytes) -> int:
        """Store ``value`` on the closest peers; returns how many accepted it."""
        ...


@runtime_checkable
class FeaturePeersDHT(DHT, Protocol):
    async def find_feature_peers(self, feature: str | bytes, n: int) -> list[PeerInfo]: ...
