"""The routing-table refresh's lookup targets (``rtrefresh.upkeep.random_preimage_with_cpl``)."""

from __future__ import annotations

import random

import pytest

from dhtstore.kadkey import Key
from dhtstore.rtrefresh.upkeep import MAX_REFRESH_CPL, random_preimage_with_cpl


def test_a_refresh_target_shares_exactly_cpl_bits_with_the_local_key() -> None:
    rng = random.Random(8)
    local = Key(rng.getrandbits(256))
    for cpl in range(MAX_REFRESH_CPL + 1):
        target = random_preimage_with_cpl(local, cpl, rng.randbytes)
        assert Key.hash(target).common_prefix_length(local) == cpl


def test_a_cpl_past_the_refreshed_buckets_is_refused() -> None:
    with pytest.raises(ValueError):
        random_preimage_with_cpl(Key(0), MAX_REFRESH_CPL + 1)
