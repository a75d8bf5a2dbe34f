"""IPFS content routing over any ``dht.KadClient``: ``find_providers(t, cid)`` and
``provide(t, peer, cid)``, with the optional ``FindProvidersDHT`` and ``ProvideDHT``
Protocols for a faster path, in the style of ``dhtstore.dht``.

Provider records are keyed by the CID's multihash, so every form of a CID (v0, v1,
any codec) of one hash meets at the same place. Both functions take a CID (text or
binary) or a bare multihash.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .. import amino, multihash
from ..dht import KadClient, providers_near, send_each
from ..types import Message, MessageType, PeerInfo


@runtime_checkable
class FindProvidersDHT(KadClient, Protocol):
    async def find_providers(self, key: bytes, count: int, *, timeout: float | None = None) -> list[PeerInfo]:
        """Up to ``count`` providers of the multihash ``key`` (0: every one found);
        LookupTimeout after ``timeout`` s, carrying the providers found."""
        ...


@runtime_checkable
class ProvideDHT(KadClient, Protocol):
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
    t: KadClient, cid_or_mh: str | bytes, count: int = amino.BUCKET_SIZE, *, timeout: float | None = None
) -> list[PeerInfo]:
    """Up to ``count`` providers (an empty list when there is none). Generic path:
    GET_PROVIDERS to the k closest peers (``dht.providers_near``)."""
    key = to_multihash(cid_or_mh)
    if isinstance(t, FindProvidersDHT):
        return await t.find_providers(key, count, timeout=timeout)
    return await providers_near(t, key, count, timeout=timeout)


async def provide(t: KadClient, peer: PeerInfo, cid_or_mh: str | bytes) -> int:
    """Announce ``peer`` (ourselves, with our addresses) as a provider; returns to how
    many peers it was sent. Generic path: ADD_PROVIDER to the k closest peers, no reply
    awaited (go sends it fire-and-forget)."""
    key = to_multihash(cid_or_mh)
    if isinstance(t, ProvideDHT):
        return await t.provide(peer, key)
    peers = await t.find_closest_peers(key, amino.BUCKET_SIZE)
    return await send_each(t, peers, Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(peer,)))


__all__ = ["FindProvidersDHT", "ProvideDHT", "find_providers", "provide", "to_multihash"]
