"""Keyspace regions: prefixes of the 256-bit Kademlia key, and the math the sweep does on them.

Keys and peers are plain ints here (``Key.value``), the cheapest form for XOR and
comparison; a sorted list of ints splits at a bit boundary with one bisect.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..kadkey import BITS

T = TypeVar("T")


@dataclass(frozen=True, slots=True, order=True)
class Prefix:
    """The first ``length`` bits of a Kademlia key, as an int of that many bits."""

    length: int
    bits: int

    def __post_init__(self) -> None:
        if not 0 <= self.length <= BITS or not 0 <= self.bits < 1 << self.length:
            raise ValueError(f"invalid prefix {self.bits:#x}/{self.length}")

    @classmethod
    def of(cls, key: int, length: int) -> Prefix:
        return cls(length, key >> (BITS - length))

    @classmethod
    def parse(cls, text: str) -> Prefix:
        """From a bit string such as ``"0110"`` or ``"0110*"`` (``""`` or ``"*"``: the whole keyspace)."""
        text = text.removesuffix("*")
        if text.strip("01"):
            raise ValueError(f"not a bit string: {text!r}")
        return cls(len(text), int(text, 2) if text else 0)

    @property
    def first(self) -> int:
        """The smallest key under the prefix."""
        return self.bits << (BITS - self.length)

    @property
    def last(self) -> int:
        """The largest key under the prefix."""
        return self.first | ((1 << (BITS - self.length)) - 1)

    def contains(self, key: int) -> bool:
        return key >> (BITS - self.length) == self.bits

    def covers(self, other: Prefix) -> bool:
        """True if every key under ``other`` is under this prefix."""
        return other.length >= self.length and other.bits >> (other.length - self.length) == self.bits

    def child(self, bit: int) -> Prefix:
        return Prefix(self.length + 1, (self.bits << 1) | bit)

    def parent(self) -> Prefix:
        return Prefix(self.length - 1, self.bits >> 1)

    def first_bytes(self) -> bytes:
        return self.first.to_bytes(32, "big")

    def last_bytes(self) -> bytes:
        return self.last.to_bytes(32, "big")

    def __str__(self) -> str:
        """The bits then ``*``: ``"0110*"``; the whole keyspace is ``"*"``."""
        return (format(self.bits, f"0{self.length}b") if self.length else "") + "*"


def intersection(a: Prefix, b: Prefix) -> Prefix | None:
    """The keys under both prefixes: the longer one if one covers the other, else None."""
    if a.covers(b):
        return b
    if b.covers(a):
        return a
    return None


def common_prefix_length(a: int, b: int) -> int:
    return BITS - (a ^ b).bit_length()


def covered_prefix(target: int, closest: Sequence[int]) -> Prefix | None:
    """The largest prefix of ``target`` all of whose peers are in ``closest``.

    ``closest`` is the answer of a lookup for the peers closest to ``target``. If the
    farthest answers share ``m`` leading bits with the target, every peer under the
    target's first ``m + 1`` bits is closer than them, so the lookup would have returned
    it. A short answer (unresponsive peers dropped) is treated the same way, never as
    "the whole network". None if the answer is empty.
    """
    if not closest:
        return None
    m = min(common_prefix_length(target, p) for p in closest)
    return Prefix.of(target, min(m + 1, BITS))


def gaps(region: Prefix, covered: Sequence[Prefix]) -> list[Prefix]:
    """The largest prefixes under ``region`` that no prefix of ``covered`` covers, in key order."""
    inside = [c for c in covered if c.covers(region) or region.covers(c)]
    out: list[Prefix] = []

    def walk(p: Prefix) -> None:
        if any(c.covers(p) for c in inside):
            return
        if not any(p.covers(c) for c in inside) or p.length == BITS:
            out.append(p)
            return
        walk(p.child(0))
        walk(p.child(1))

    walk(region)
    return out


def split_at_bit(values: Sequence[int], lo: int, hi: int, depth: int) -> int:
    """In sorted ``values[lo:hi]``, all sharing their first ``depth`` bits, the index of
    the first value whose bit ``depth`` is 1."""
    if lo >= hi:
        return lo
    shift = BITS - depth
    middle = ((values[lo] >> shift) << shift) | (1 << (shift - 1))
    return bisect.bisect_left(values, middle, lo, hi)


def minimal_regions(region: Prefix, peers: Sequence[int], k: int) -> list[Prefix]:
    """Split ``region`` into the smallest prefixes that each still hold at least ``k`` peers.

    ``peers`` are the sorted keys of the peers under ``region``. A prefix splits only when
    both halves keep ``k`` peers, so every key of a returned prefix has its ``k`` closest
    peers inside it (go's ``extractMinimalRegions``).
    """
    out: list[Prefix] = []
    stack = [(region, 0, len(peers))]
    while stack:
        p, lo, hi = stack.pop()
        if p.length < BITS:
            mid = split_at_bit(peers, lo, hi, p.length)
            if mid - lo >= k and hi - mid >= k:
                stack.append((p.child(1), mid, hi))
                stack.append((p.child(0), lo, mid))
                continue
        out.append(p)
    return out


def allocate(keys: Sequence[int], peers: Sequence[int], k: int) -> dict[int, list[tuple[int, int]]]:
    """Give every key to its ``k`` closest peers.

    ``keys`` and ``peers`` are sorted ints. Returns, for each peer (by index in
    ``peers``), slices ``(start, stop)`` of ``keys``: the keys it must receive. Works down
    the bits as go's ``AllocateToKClosest`` does, so a run of keys sharing a prefix is
    handed out as one slice rather than key by key.
    """
    out: dict[int, list[tuple[int, int]]] = {}

    def give(klo: int, khi: int, plo: int, phi: int) -> None:
        for i in range(plo, phi):
            out.setdefault(i, []).append((klo, khi))

    # At ``depth``, the keys share their first ``depth`` bits and so do the peers, and
    # the peers are the closest remaining ones to every one of the keys: bits below
    # ``depth`` alone now order them. ``want`` peers are still needed.
    stack = [(0, 0, len(keys), 0, len(peers), k)]
    while stack:
        depth, klo, khi, plo, phi, want = stack.pop()
        if want <= 0 or klo >= khi or plo >= phi:
            continue
        if phi - plo <= want or depth == BITS:
            give(klo, khi, plo, phi)
            continue
        kmid = split_at_bit(keys, klo, khi, depth)
        pmid = split_at_bit(peers, plo, phi, depth)
        for a, b, same_lo, same_hi, other_lo, other_hi in (
            (klo, kmid, plo, pmid, pmid, phi),
            (kmid, khi, pmid, phi, plo, pmid),
        ):
            if a >= b:
                continue
            same = same_hi - same_lo
            if same >= want:
                stack.append((depth + 1, a, b, same_lo, same_hi, want))
                continue
            give(a, b, same_lo, same_hi)
            # The rest come from the other half, where the bits below this level decide.
            stack.append((depth + 1, a, b, other_lo, other_hi, want - same))
    return out
