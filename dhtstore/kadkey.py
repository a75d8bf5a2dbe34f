"""256-bit Kademlia keys and XOR distance.

Kad key = SHA-256 of: the binary peer id (peers), the multihash, not the CID (content),
or the raw record key (values). Keys are held as Python ints: XOR and comparison on
ints are single C operations, which the routing table and lookups lean on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .multihash import SHA2_256_HEADER

if TYPE_CHECKING:
    from .peerid import PeerId

BITS = 256


class Key:
    """A point in the 256-bit keyspace. ``int(key)`` is its value, big-endian."""

    __slots__ = ("value",)

    def __init__(self, value: int):
        if not 0 <= value < 1 << BITS:
            raise ValueError("Kademlia key out of the 256-bit range")
        self.value = value

    @classmethod
    def from_digest(cls, digest: bytes) -> Key:
        if len(digest) != 32:
            raise ValueError(f"a Kademlia key is 32 bytes, got {len(digest)}")
        return cls(int.from_bytes(digest, "big"))

    @classmethod
    def hash(cls, preimage: bytes) -> Key:
        return cls.from_digest(hashlib.sha256(preimage).digest())

    @classmethod
    def for_peer(cls, peer: PeerId) -> Key:
        return cls.hash(peer.to_bytes())

    @classmethod
    def for_multihash(cls, mh: bytes) -> Key:
        return cls.hash(mh)

    @classmethod
    def for_record(cls, record_key: bytes) -> Key:
        return cls.hash(record_key)

    def distance(self, other: Key) -> int:
        return self.value ^ other.value

    def common_prefix_length(self, other: Key) -> int:
        return BITS - (self.value ^ other.value).bit_length()

    def bit(self, i: int) -> int:
        """Bit ``i`` counted from the most significant (bit 0)."""
        return (self.value >> (BITS - 1 - i)) & 1

    def prefix(self, length: int) -> int:
        """The first ``length`` bits as an int."""
        return self.value >> (BITS - length) if length else 0

    def to_bytes(self) -> bytes:
        return self.value.to_bytes(32, "big")

    def hex(self) -> str:
        return self.to_bytes().hex()

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Key({self.hex()[:16]}…)"


def preimage_with_prefix(bits: int, length: int, rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """A sha2-256 multihash whose Kademlia key starts with the ``length`` bits ``bits``:
    a FIND_NODE target inside that part of the keyspace (FIND_NODE takes a preimage).

    Random digests from ``rng`` are tried until one hashes there: 2^length tries on
    average, so callers keep ``length`` to about 20 bits.
    """
    if not 0 <= length <= BITS or not 0 <= bits < 1 << length:
        raise ValueError(f"{bits} is not a prefix of {length} bits")
    shift = BITS - length
    for _ in range(1 << (length + 6)):  # failing this bound has probability ~e^-64
        candidate = SHA2_256_HEADER + rng(32)
        if int.from_bytes(hashlib.sha256(candidate).digest(), "big") >> shift == bits:
            return candidate
    raise ValueError(f"no preimage found under a prefix of {length} bits")  # pragma: no cover
