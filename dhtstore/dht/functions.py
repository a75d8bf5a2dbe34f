"""The free functions: the specialised method when the object has one, else the generic
algorithm on ``find_closest_peers`` and the object's own ``request``/``send``.

Every generic path needs only what ``KadClient`` (``RecordClient`` for value records)
declares, so a call type-checks for any object that has those methods. The outcomes
are the same on both paths: a ``Record``/``PeerInfo``/list, or ``NotFound``,
``QuorumFailed``, ``LookupTimeout``.
"""

from __future__ import annotations

import hashlib
import math

import anyio

from .. import amino
from ..multihash import SHA2_256, Multihash
from ..peerid import PeerId
from ..types import Message, MessageType, PeerInfo, Record
from .fanout import ask_each, correct_holders, put_record
from .protocols import (
    FeaturePeersDHT,
    FindPeerDHT,
    KadClient,
    LookupTimeout,
    NotFound,
    RecordClient,
    ValueDHT,
)
from .results import ProviderSet, ValueSearch


def deadline_after(timeout: float | None) -> float:
    """The anyio clock time ``timeout`` seconds from now (infinity for no limit)."""
    return math.inf if timeout is None else anyio.current_time() + timeout


async def find_peer(t: KadClient, peer_id: PeerId, *, timeout: float | None = None) -> PeerInfo:
    """The peer and its addresses. Generic path: the peer is among the closest peers to
    its own id that answered. NotFound when it is not; LookupTimeout after ``timeout`` s."""
    if isinstance(t, FindPeerDHT):
        return await t.find_peer(peer_id, timeout=timeout)
    key = peer_id.to_bytes()
    with anyio.move_on_after(timeout) as scope:
        closest = await t.find_closest_peers(key, amino.BUCKET_SIZE)
    if scope.cancelled_caught:
        raise LookupTimeout(key, timeout)
    for peer in closest:
        if peer.peer_id == peer_id and peer.addrs:
            return peer
    raise NotFound(key, "peer")


async def get_value(t: RecordClient, key: bytes, quorum: int = 0, *, timeout: float | None = None) -> Record:
    """The best valid record for ``key`` (``ValueSearch`` says which records count and
    which peers are corrected afterwards). Generic path: GET_VALUE to the k closest at
    once; ``quorum`` valid answers cancel the requests still in flight.

    Raises NotFound, QuorumFailed (the lookup ended with fewer than ``quorum`` valid
    records) or LookupTimeout (``timeout`` s passed; it carries the records received)."""
    if isinstance(t, ValueDHT):
        return await t.get_value(key, quorum, timeout=timeout)
    search = ValueSearch(key, t.validator, quorum)
    deadline = deadline_after(timeout)
    with anyio.CancelScope(deadline=deadline) as scope:
        closest = await t.find_closest_peers(key, amino.BUCKET_SIZE)
        await ask_each(t, closest, Message(MessageType.GET_VALUE, key=key), search.on_reply)
    if scope.cancelled_caught:
        raise LookupTimeout(key, timeout, records=tuple(search.records))
    if not search.quorum_reached:
        await correct_holders(t, search, closest, deadline)
    return search.result()


async def set_value(t: RecordClient, key: bytes, value: bytes) -> int:
    """Validate, then store the record on the closest peers; returns how many echoed it
    back (accepted it). A record the validator refuses raises RecordError."""
    if isinstance(t, ValueDHT):
        return await t.set_value(key, value)
    t.validator.validate(key, value)
    peers = await t.find_closest_peers(key, amino.BUCKET_SIZE)
    return await put_record(t, peers, Record(key, value))


def feature_key(feature: str | bytes) -> bytes:
    """The provider key under which peers announce a feature: the sha2-256 multihash of
    its name, as go-libp2p's routing discovery does for a rendezvous namespace.
    Announce with ``ipfs.provide(t, me, feature_key(name))``."""
    raw = feature.encode() if isinstance(feature, str) else feature
    return Multihash(SHA2_256, hashlib.sha256(raw).digest()).to_bytes()


async def find_feature_peers(t: KadClient, feature: str | bytes, n: int = amino.BUCKET_SIZE) -> list[PeerInfo]:
    """Up to ``n`` peers that announced ``feature`` (provider records at ``feature_key``)."""
    if isinstance(t, FeaturePeersDHT):
        return await t.find_feature_peers(feature, n)
    return await providers_near(t, feature_key(feature), n)


async def providers_near(t: KadClient, key: bytes, count: int, *, timeout: float | None = None) -> list[PeerInfo]:
    """The generic provider search: GET_PROVIDERS to the k closest peers of the
    multihash ``key``, merged by ``ProviderSet``; ``count`` providers (0: no limit)
    cancel the requests still in flight. LookupTimeout carries the providers found."""
    found = ProviderSet(count)
    with anyio.move_on_after(timeout) as scope:
        peers = await t.find_closest_peers(key, amino.BUCKET_SIZE)
        await ask_each(t, peers, Message(MessageType.GET_PROVIDERS, key=key), found.on_reply)
    if scope.cancelled_caught:
        raise LookupTimeout(key, timeout, peers=tuple(found.providers()))
    return found.providers()
