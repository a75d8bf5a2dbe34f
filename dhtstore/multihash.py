"""Multihash parsing and the CID → multihash step, with the size limits the DHT enforces."""

from __future__ import annotations

from dataclasses import dataclass

from . import amino, varint

IDENTITY = 0x00
SHA2_256 = 0x12
SHA2_256_HEADER = bytes((SHA2_256, 32))  # code and length of a sha2-256 multihash (both one-byte varints)
# go-libp2p-kad-dht refuses provider keys longer than this (handlers.go).


class MultihashError(ValueError):
    """Bytes or text that are not a valid multihash or CID."""


@dataclass(frozen=True, slots=True)
class Multihash:
    code: int
    digest: bytes

    def to_bytes(self) -> bytes:
        return varint.encode(self.code) + varint.encode(len(self.digest)) + self.digest


def parse(data: bytes) -> Multihash:
    """Parse a whole multihash; trailing bytes or a length mismatch are errors."""
    if not data:
        raise MultihashError("empty multihash")
    try:
        code, pos = varint.decode_exact(data)
        length, pos = varint.decode_exact(data, pos)
    except varint.VarintError as exc:
        raise MultihashError(f"malformed multihash: {exc}") from None
    digest = data[pos:]
    if len(digest) != length:
        raise MultihashError(f"multihash digest is {len(digest)} bytes, header says {length}")
    return Multihash(code, bytes(digest))


def check_key(key: bytes) -> bytes:
    """Validate a provider-record key: a multihash of at most 80 bytes."""
    if len(key) > amino.MAX_PROVIDER_KEY_BYTES:
        raise MultihashError(f"key is {len(key)} bytes, the limit is {amino.MAX_PROVIDER_KEY_BYTES}")
    parse(key)
    return key


def from_cid(text_or_bytes: str | bytes) -> bytes:
    """Return the multihash bytes of a CID (v0 or v1), given as text or binary."""
    from cid import from_bytes, from_string  # py-cid

    try:
        c = from_string(text_or_bytes) if isinstance(text_or_bytes, str) else from_bytes(text_or_bytes)
    except Exception as exc:  # py-cid raises a mix of ValueError/KeyError/TypeError
        raise MultihashError(f"not a CID: {text_or_bytes!r} ({exc})") from None
    mh = bytes(c.multihash)
    parse(mh)
    return mh


def cid_string(mh: bytes, codec: str = "raw") -> str:
    """A CIDv1 (base32) naming this multihash, for display."""
    from cid import make_cid

    text: str = make_cid(1, codec, mh).encode("base32").decode()
    return text
