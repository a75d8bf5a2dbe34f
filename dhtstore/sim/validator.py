"""A record validator for simulated nodes: ``SequenceValidator`` accepts any key and
orders values by a leading 8-byte sequence number, so tests can tell newer from older
without signing IPNS records."""

from __future__ import annotations

from ..records.api import RecordError


class SequenceValidator:
    """Values are ``seq.to_bytes(8, "big") + payload``; the highest sequence wins."""

    def validate(self, key: bytes, value: bytes) -> None:
        if len(value) < 8:
            raise RecordError("a simulated value starts with an 8-byte sequence number")

    def select(self, key: bytes, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: (int.from_bytes(values[i][:8], "big"), -i))

    @staticmethod
    def encode(seq: int, payload: bytes = b"") -> bytes:
        return seq.to_bytes(8, "big") + payload
