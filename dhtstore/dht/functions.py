"""The free functions: the specialised method when the DHT has one, else the generic
algorithm on ``find_closest_peers``.

The generic algorithms must talk to the peers that ``find_closest_peers`` returns, so
those that send messages take a ``messenger`` (``network.api.KadMessenger``) as a
keyword; ``get_value``/``set_value`` also take the ``validator`` of records. Neither is
needed, nor used, when the DHT implements the richer Protocol.
"""

from __future__ import annotations

import hashlib
import logging

from .. import amino
from ..multihash import SHA2_256, Multihash
from ..network.api import KadMessenger
from ..peerid import PeerId
from ..records.api import RecordError, Validator
from ..types import Message, MessageType, PeerInfo, Record
from .fanout import ask_each
from .protocols import DHT, FeaturePeersDHT, FindPeerDHT, ValueDHT

log = logging.getLogger(__name__)


def _need(value: object, name: str, t: DHT, protocol: type) -> None:
    if value is None:
        raise TypeError(
            f"{type(t).__name__} does not implement {protocol.__name__}; pass {name}= to run the generic algorithm"
        )


async def find_peer(t: DHT, peer_id: PeerId) -> PeerInfo | None:
    """The peer and its addresses, or None when the closest peers do not know it."""
    if isinstance(t, FindPeerDHT):
        return await t.find_peer(peer_id)
    for peer in await t.find_closest_peers(peer_id.to_bytes(), amino.BUCKET_SIZE):
        if peer.peer_id == peer_id and peer.addrs:
            return peer
    return None


async def get_value(
    t: DHT,
    key: bytes,
    quorum: int = 0,
    *,
    messenger: KadMessenger | None = None,
    validator: Validator | None = None,
) -> Record | None:
    """The best valid record for ``key`` among the closest peers' answers, or None.

    Generic path: GET_VALUE to the k closest, keep the valid answers, select the best,
    and PUT it back to those that answered with another record or none (entry
    correction). ``quorum`` stops the specialised path early; the generic one asks the
    k closest at once, so it only reports a shortfall in the log.
    """
    if isinstance(t, ValueDHT):
        return await t.get_value(key, quorum)
    _need(messenger, "messenger", t, ValueDHT)
    _need(validator, "validator", t, ValueDHT)
    assert messenger is not None and validator is not None
    peers = await t.find_closest_peers(key, amino.BUCKET_SIZE)
    answers = await ask_each(messenger, peers, Message(MessageType.GET_VALUE, key=key))
    values: list[bytes | None] = []
    for peer, reply in answers:
        value = None
        if reply.record is not None and reply.record.key == key:
            try:
                validator.validate(key, reply.record.value)
                value = reply.record.value
            except RecordError as exc:
                log.debug("get_value: invalid record from %s: %s", peer.peer_id, exc)
        values.append(value)
    valid = [v for v in values if v is not None]
    if not valid:
        return None
    if len(valid) < quorum:
        log.info("get_value: %d valid answers, quorum %d", len(valid), quorum)
    best = valid[validator.select(key, valid)]
    stale = [peer for (peer, _), value in zip(answers, values) if value != best]
    correction = Message(MessageType.PUT_VALUE, key=key, record=Record(key, best))
    await ask_each(messenger, stale, correction, timeout=amino.PUT_OPERATION_TIMEOUT)
    return Record(key, best)


async def set_value(
    t: DHT,
    key: bytes,
    value: bytes,
    *,
    messenger: KadMessenger | None = None,
    validator: Validator | None = None,
) -> int:
    """Store a record on the closest peers; returns how many echoed it back (accepted)."""
    if isinstance(t, ValueDHT):
        return await t.set_value(key, value)
    _need(messenger, "messenger", t, ValueDHT)
    _need(validator, "validator", t, ValueDHT)
    assert messenger is not None and validator is not None
    validator.validate(key, value)
    peers = await t.find_closest_peers(key, amino.BUCKET_SIZE)
    message = Message(MessageType.PUT_VALUE, key=key, record=Record(key, value))
    replies = await ask_each(messenger, peers, message, timeout=amino.PUT_OPERATION_TIMEOUT)
    return sum(1 for _, reply in replies if reply.record is not None and reply.record.value == value)


def feature_key(feature: str | bytes) -> bytes:
    """The provider key under which peers announce a feature: the sha2-256 multihash of
    its name, as go-libp2p's routing discovery does for a rendezvous namespace.
    Announce with ``ipfs.provide(t, me, feature_key(name))``."""
    raw = feature.encode() if isinstance(feature, str) else feature
    return Multihash(SHA2_256, hashlib.sha256(raw).digest()).to_bytes()


async def find_feature_peers(
    t: DHT, feature: str | bytes, n: int = amino.BUCKET_SIZE, *, messenger: KadMessenger | None = None
) -> list[PeerInfo]:
    """Up to ``n`` peers that announced ``feature`` (provider records at ``feature_key``)."""
    if isinstance(t, FeaturePeersDHT):
        return await t.find_feature_peers(feature, n)
    _need(messenger, "messenger", t, FeaturePeersDHT)
    assert messenger is not None
    return await providers_near(t, feature_key(feature), n, messenger)


async def providers_near(t: DHT, key: bytes, count: int, messenger: KadMessenger) -> list[PeerInfo]:
    """The generic provider search: GET_PROVIDERS to the k closest peers of the
    multihash ``key``, providers merged (an entry with addresses wins over one without)."""
    peers = await t.find_closest_peers(key, amino.BUCKET_SIZE)
    found: dict[PeerId, PeerInfo] = {}
    for _, reply in await ask_each(messenger, peers, Message(MessageType.GET_PROVIDERS, key=key)):
        for info in reply.provider_peers[: amino.MAX_CLOSER_PEERS]:
            known = found.get(info.peer_id)
            if known is None or (info.addrs and not known.addrs):
                found[info.peer_id] = info
    return list(found.values())[:count]
