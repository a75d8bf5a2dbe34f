"""libp2p peer ids: the multihash of a serialized PublicKey protobuf.

Identity multihash when the serialized key is at most 42 bytes (Ed25519, secp256k1),
SHA-256 otherwise (RSA, ECDSA). Text forms: base58btc (``12D3KooW…``, ``Qm…``) and
CIDv1 with the ``libp2p-key`` codec (``bafz…``), as in the libp2p peer-ids spec.
"""

from __future__ import annotations

import hashlib

import base58

from . import multihash, varint

MAX_INLINE_KEY_LENGTH = 42
LIBP2P_KEY_CODEC = 0x72


class PeerIdError(ValueError):
    """Bytes or text that are not a valid peer id."""


class PeerId:
    """An immutable, hashable peer id. Compare and hash by its binary multihash."""

    __slots__ = ("_bytes", "_hash")

    def __init__(self, data: bytes):
        self._bytes = bytes(data)
        self._hash = hash(self._bytes)

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        """Parse a binary peer id, refusing anything but identity (≤42) or sha2-256 multihashes."""
        if not data:
            raise PeerIdError("empty peer id")
        try:
            mh = multihash.parse(bytes(data))
        except multihash.MultihashError as exc:
            raise PeerIdError(f"peer id is not a multihash: {exc}") from None
        if mh.code == multihash.IDENTITY:
            if not 0 < len(mh.digest) <= MAX_INLINE_KEY_LENGTH:
                raise PeerIdError(f"identity peer id with a {len(mh.digest)}-byte key")
        elif mh.code == multihash.SHA2_256:
            if len(mh.digest) != 32:
                raise PeerIdError(f"sha2-256 peer id with a {len(mh.digest)}-byte digest")
        else:
            raise PeerIdError(f"peer id uses multihash code 0x{mh.code:x}, not identity or sha2-256")
        return cls(data)

    @classmethod
    def from_public_key_bytes(cls, serialized: bytes) -> PeerId:
        """The peer id of a serialized libp2p PublicKey protobuf."""
        if len(serialized) <= MAX_INLINE_KEY_LENGTH:
            return cls(multihash.Multihash(multihash.IDENTITY, serialized).to_bytes())
        digest = hashlib.sha256(serialized).digest()
        return cls(multihash.Multihash(multihash.SHA2_256, digest).to_bytes())

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc (``12D3KooW…``/``Qm…``) or a CIDv1 with the libp2p-key codec."""
        text = text.strip()
        if not text:
            raise PeerIdError("empty peer id")
        if text[0] == "1" or text.startswith("Qm"):
            try:
                return cls.from_bytes(base58.b58decode(text))
            except ValueError as exc:
                raise PeerIdError(f"invalid base58 peer id {text!r}: {exc}") from None
        from cid import from_string as cid_from_string

        try:
            c = cid_from_string(text)
        except Exception as exc:
            raise PeerIdError(f"invalid peer id {text!r}: {exc}") from None
        if c.version != 1 or c.codec != "libp2p-key":
            raise PeerIdError(f"CID {text!r} does not use the libp2p-key codec")
        return cls.from_bytes(bytes(c.multihash))

    def to_bytes(self) -> bytes:
        return self._bytes

    def to_base58(self) -> str:
        return base58.b58encode(self._bytes).decode()

    def to_cid_string(self) -> str:
        """CIDv1 (libp2p-key) in base32, the ``bafz…`` form."""
        import base64

        raw = varint.encode(1) + varint.encode(LIBP2P_KEY_CODEC) + self._bytes
        return "b" + base64.b32encode(raw).decode().lower().rstrip("=")

    def inline_public_key(self) -> bytes | None:
        """The serialized public key, when the id inlines it (identity multihash)."""
        mh = multihash.parse(self._bytes)
        return mh.digest if mh.code == multihash.IDENTITY else None

    def __bytes__(self) -> bytes:
        return self._bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and self._bytes == other._bytes

    def __lt__(self, other: PeerId) -> bool:
        return self._bytes < other._bytes

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerId({self.to_base58()})"
