"""The n keys XOR-closest to a target, read from a sorted list without scanning it.

Keys sharing a prefix form a contiguous run of a sorted list. Walking down the bits,
the run splits in two at one bisection: the half that agrees with the target on this
bit is closer than every key of the other half. While the near half holds enough keys,
keep only it; when it does not, all of it belongs to the answer (closest first) and
the rest comes from the far half. A run small enough is sorted outright. That is
O(log N) bisections plus one small sort: a few µs for thousands of keys.
"""

from __future__ import annotations

import bisect

from ..kadkey import BITS


def closest_keys(keys: list[int], target: int, n: int) -> list[int]:
    """The ``n`` elements of the ascending list ``keys`` XOR-closest to ``target``, closest first."""
    out: list[int] = []
    lo, hi = 0, len(keys)
    bit = BITS - 1
    while lo < hi and len(out) < n:
        need = n - len(out)
        if hi - lo <= 2 * need or bit < 0:
            out.extend(sorted(keys[lo:hi], key=lambda k: k ^ target)[:need])
            break
        # every key in [lo, hi) has the same bits above `bit`; mid is where `bit` turns 1
        base = keys[lo] >> (bit + 1) << (bit + 1)
        mid = bisect.bisect_left(keys, base | (1 << bit), lo, hi)
        (near_lo, near_hi), (far_lo, far_hi) = ((mid, hi), (lo, mid)) if target >> bit & 1 else ((lo, mid), (mid, hi))
        if near_hi - near_lo >= need:
            lo, hi = near_lo, near_hi
        else:
            out.extend(sorted(keys[near_lo:near_hi], key=lambda k: k ^ target))
            lo, hi = far_lo, far_hi
        bit -= 1
    return out
