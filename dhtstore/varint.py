"""Unsigned varints (multiformats unsigned-varint): at most 9 bytes, minimal encoding."""

from __future__ import annotations

MAX_VARINT_BYTES = 9


class VarintError(ValueError):
    """A varint that is malformed, too long, or not minimally encoded."""


def encode(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint must be non-negative, got {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``offset``; return ``(value, next_offset)``, or None if incomplete.

    Raises VarintError for an over-long or non-minimal varint, so a peer cannot make us
    wait for bytes that would never form a valid length.
    """
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        pos = offset + i
        if pos >= len(buf):
            return None
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise VarintError("varint is not minimally encoded")
            return value, pos + 1
        shift += 7
    raise VarintError(f"varint longer than {MAX_VARINT_BYTES} bytes")


def decode_exact(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode a varint at ``offset`` that must be complete in ``data``."""
    result = decode(data, offset)
    if result is None:
        raise VarintError("truncated varint")
    return result
