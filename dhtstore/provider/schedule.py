"""Where in the reprovide cycle each region's turn falls.

As go's ``reprovideTimeForPrefix``: a region's prefix is XORed with the same-length
start of the node's random ``order`` key and read as an integer ``i`` in ``[0, 2^len)``;
its turn is ``cycle_start + interval × i / 2^len``, again every interval. Regions of
equal length thus get distinct, evenly spaced turns, and since every node draws its
own order key, the network's reprovides spread over the day instead of bunching.
"""

from __future__ import annotations

import math

from ..kadkey import BITS
from .keyspace import Prefix

# Beyond this many bits a prefix is finer than any useful slice of the interval (go: 24).
MAX_PREFIX_BITS = 24


def region_offset(prefix: Prefix, order: int, interval: float) -> float:
    """Seconds from the start of a cycle to the region's turn."""
    length = min(prefix.length, MAX_PREFIX_BITS)
    if length == 0:
        return 0.0
    index = (prefix.bits >> (prefix.length - length)) ^ (order >> (BITS - length))
    return interval * index / (1 << length)


def next_turn(prefix: Prefix, order: int, interval: float, cycle_start: float, after: float) -> float:
    """The region's first turn strictly after ``after``."""
    first = cycle_start + region_offset(prefix, order, interval)
    cycles = math.floor((after - first) / interval) + 1
    return first + max(cycles, 0) * interval


def retry_delay(attempts: int, base: float, ceiling: float) -> float:
    """Backoff before retrying work that failed ``attempts`` times in a row: doubling, capped."""
    return min(ceiling, base * 2.0 ** max(attempts - 1, 0))
