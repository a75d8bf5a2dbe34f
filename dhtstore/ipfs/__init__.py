"""IPFS content routing over any ``dht.DHT``: ``find_providers(t, cid)`` and
``provide(t, peer, cid)``, with the optional ``FindProvidersDHT`` and ``ProvideDHT``
Protocols for a faster path, in the style of ``dhtstore.dht``.

Provider records are keyed by the CID's multihash, so every form of a CID (v0, v1,
any codec) of one hash meets at the same place. Both functions take a CID (text or
binary) or a bare multihash.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .. import amino, multihash
from ..dht import DHT, providers_near
from ..dht.fanout import send_each
from ..network.api import KadMessenger
from ..types import Message, MessageType, PeerInfo


@runtime_checkable
class FindProvidersDHT(DHT, Protocol):
    async def find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        """Up to ``count`` providers of the multihash ``key``."""
        ...


@runtime_checkable
class ProvideDHT(DHT, Protocol):
    async def provide(self, provider: PeerInfo, key: bytes) -> int:
        """Announce ``provider`` for the multihash ``key`` to the closest peers;
        returns to how many it was sent."""
        ...


def to_multihash(cid_or_mh: str | bytes) -> bytes:
    """The multihash of a CID (text or binary), or the bytes themselves when they are one.

    Raises multihash.MultihashError for anything else."""
    if isinstance(cid_or_mh, bytes):
        try:
            return multihash.check_key(cid_or_mh)
        except multihash.MultihashError:
            pass
    return multihash.check_key(multihash.from_cid(cid_or_mh))


async def find_providers(
    t: DHT, cid_or_mh: str | bytes, count: int = amino.BUCKET_SIZE, *, messenger: KadMessenger | None = None
) -> list[PeerInfo]:
    """Up to ``count`` providers. Generic path: GET_PROVIDERS to the k closest peers,
    through ``messenger``."""
    key = to_multihash(cid_or_mh)
    if isinstance(t, FindProvidersDHT):
        return await t.find_providers(key, count)
    if messenger is None:
        raise TypeError(f"{type(t).__name__} does not implement FindProvidersDHT; pass messenger=")
    return await providers_near(t, key, count, messenger)


async def provide(
    t: DHT, peer: PeerInfo, cid_or_mh: str | bytes, *, messenger: KadMessenger | None = None
) -> int:
    """Announce ``peer`` (ourselves, with our addresses) as a provider. Generic path:
    ADD_PROVIDER to the k closest peers through ``messenger``, no reply awaited."""
    key = to_multihash(cid_or_mh)
    if isinstance(t, ProvideDHT):
        return await t.provide(peer, key)
    if messenger is None:
        raise TypeError(f"{type(t).__name__} does not implement ProvideDHT; pass messenger=")
    peers = await t.find_closest_peers(key, amino.BUCKET_SIZE)
    return await send_each(messenger, peers, Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(peer,)))


__all__ = ["FindProvidersDHT", "ProvideDHT", "find_providers", "provide", "to_multihash"]
