"""A Bloom filter of byte strings: salted BLAKE2b, double hashing. ``in`` False means
the key was never added; True means it may have been (at about ``fp_rate``). The
provider store's key filter and the provide list's filter are built on it.
"""

from __future__ import annotations

import hashlib
import math
import secrets

FP_RATE = 0.001


class BloomFilter:
    def __init__(self, capacity: int, fp_rate: float = FP_RATE):
        self.capacity = capacity
        bits = max(64, math.ceil(-capacity * math.log(fp_rate) / math.log(2) ** 2))
        self._m = bits
        self._k = max(1, round(bits / capacity * math.log(2)))
        self._bits = bytearray((bits + 7) // 8)
        self._salt = secrets.token_bytes(16)  # keys are chosen by peers: their bit positions are not
        self.added = 0  # keys added that were not (apparently) present: about the distinct keys

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def _positions(self, key: bytes) -> tuple[int, int]:
        d = hashlib.blake2b(key, digest_size=16, key=self._salt).digest()
        return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") | 1

    def add(self, key: bytes) -> bool:
        """Add ``key``; whether it may have been in the filter already (``key in``
        before the add, for the price of one hash)."""
        h1, h2 = self._positions(key)
        bits, m = self._bits, self._m
        new = False
        for i in range(self._k):
            pos = (h1 + i * h2) % m
            byte, mask = pos >> 3, 1 << (pos & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                new = True
        if new:
            self.added += 1
        return not new

    def __contains__(self, key: bytes) -> bool:
        h1, h2 = self._positions(key)
        bits, m = self._bits, self._m
        for i in range(self._k):
            pos = (h1 + i * h2) % m
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
        return True
