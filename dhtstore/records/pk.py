"""Public-key records (``/pk/`` namespace), as go-libp2p-record ``pubkey.go`` checks them.

Key: ``/pk/`` + a binary peer id (a multihash). Value: the serialized libp2p
PublicKey protobuf whose peer id is that multihash. All valid values for a key are
the same key, so selection always picks the first.
"""

from __future__ import annotations

from .. import multihash
from ..crypto.keys import KeyFormatError, PublicKey
from ..peerid import PeerId
from .api import RecordError

NAMESPACE_PREFIX = b"/pk/"


def routing_key(peer: PeerId) -> bytes:
    return NAMESPACE_PREFIX + peer.to_bytes()


def verify(key: bytes, value: bytes) -> PublicKey:
    """Return the public key in ``value``; raise RecordError unless it is the one ``key`` names."""
    if not key.startswith(NAMESPACE_PREFIX):
        raise RecordError("key is not in the /pk/ namespace")
    key_hash = key[len(NAMESPACE_PREFIX) :]
    try:
        multihash.parse(key_hash)
    except multihash.MultihashError as exc:
        raise RecordError(f"/pk/ key is not a multihash: {exc}") from None
    try:
        public_key = PublicKey.from_protobuf(value)
    except KeyFormatError as exc:
        raise RecordError(f"/pk/ value is not a public key: {exc}") from None
    if public_key.peer_id().to_bytes() != key_hash:
        raise RecordError("public key does not match the /pk/ key")
    return public_key
