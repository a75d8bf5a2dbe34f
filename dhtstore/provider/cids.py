"""CID text → multihash, fast for the two forms that make up nearly every provide list.

Importing a million CIDs must take seconds, and py-cid spends ~70 µs on a base32 CIDv1.
CIDv1 in base32 (``b…``) and CIDv0 (``Qm…``) are decoded here with C-speed codecs; any
other form goes through ``multihash.from_cid`` (py-cid). Either way the multihash is
then checked as a provider key (a valid multihash of at most 80 bytes).
"""

from __future__ import annotations

import base58

from .. import multihash, varint
from .api import ProvideError

CIDV1 = 1
_B32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
# RFC 4648 base32 digits → the digits int(…, 32) reads: the decode then runs in C
# (base64.b32decode is pure Python before 3.13, ~30 µs a CID).
_B32_TO_INT_DIGITS = str.maketrans("abcdefghijklmnopqrstuvwxyz234567", "0123456789abcdefghijklmnopqrstuv")


def _b32decode(body: str) -> bytes:
    """Unpadded lowercase RFC 4648 base32 (the multibase ``b`` form) to bytes."""
    bits = len(body) * 5
    spare = bits % 8
    if spare >= 5:  # no unpadded base32 string leaves 5 or more spare bits
        raise ValueError("impossible base32 length")
    value = int(body.translate(_B32_TO_INT_DIGITS), 32) if body else 0
    if value & ((1 << spare) - 1):
        raise ValueError("non-zero padding bits")
    return (value >> spare).to_bytes(bits // 8, "big")


def _v1_base32(text: str) -> bytes:
    body = text[1:]
    if not body or not _B32_ALPHABET.issuperset(body):
        raise multihash.MultihashError(f"not a base32 CID: {text!r}")
    try:
        raw = _b32decode(body)
    except ValueError:
        raise multihash.MultihashError(f"not a base32 CID: {text!r}") from None
    try:
        version, pos = varint.decode_exact(raw)
        _codec, pos = varint.decode_exact(raw, pos)
    except varint.VarintError as exc:
        raise multihash.MultihashError(f"malformed CID {text!r}: {exc}") from None
    if version != CIDV1:
        raise multihash.MultihashError(f"CID version {version} in {text!r}")
    return raw[pos:]


def _v0(text: str) -> bytes:
    try:
        raw = base58.b58decode(text)
    except ValueError:
        raise multihash.MultihashError(f"not a CIDv0: {text!r}") from None
    if len(raw) != 34 or raw[:2] != multihash.SHA2_256_HEADER:
        raise multihash.MultihashError(f"not a CIDv0 (sha2-256 multihash): {text!r}")
    return raw


def multihash_of(cid: str | bytes) -> bytes:
    """The multihash a CID names (text, or binary CID), checked as a provider key.

    Raises ProvideError with a one-line reason for anything else.
    """
    try:
        if isinstance(cid, str) and len(cid) == 46 and cid.startswith("Qm"):
            mh = _v0(cid)
        elif isinstance(cid, str) and cid.startswith("b"):
            mh = _v1_base32(cid)
        else:
            mh = multihash.from_cid(cid)
        return multihash.check_key(mh)
    except multihash.MultihashError as exc:
        raise ProvideError(str(exc)) from None
