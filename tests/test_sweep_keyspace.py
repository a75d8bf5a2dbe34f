"""The keyspace math of the sweep, checked against brute force; and the schedule offsets."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtstore.kadkey import BITS
from dhtstore.provider.keyspace import (
    Prefix,
    allocate,
    common_prefix_length,
    covered_prefix,
    gaps,
    minimal_regions,
)
from dhtstore.provider.planner import preimage_under
from dhtstore.provider.schedule import next_turn, region_offset, retry_delay


def under(prefix: Prefix, rng: random.Random) -> int:
    return prefix.first | rng.getrandbits(BITS - prefix.length)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), nkeys=st.integers(0, 60), npeers=st.integers(1, 70), k=st.integers(1, 25), plen=st.integers(0, 6))
def test_allocate_gives_each_key_its_k_closest(seed: int, nkeys: int, npeers: int, k: int, plen: int) -> None:
    rng = random.Random(seed)
    region = Prefix.of(rng.getrandbits(BITS), plen)
    keys = sorted({under(region, rng) for _ in range(nkeys)})
    # Peers mostly in the region, some anywhere: allocation must still be exact.
    peers = sorted({under(region, rng) if rng.random() < 0.8 else rng.getrandbits(BITS) for _ in range(npeers)})
    got: dict[int, set[int]] = {}
    for peer, slices in allocate(keys, peers, k).items():
        for start, stop in slices:
            for i in range(start, stop):
                got.setdefault(i, set()).add(peer)
    for i, key in enumerate(keys):
        assert got.get(i, set()) == set(sorted(range(len(peers)), key=lambda p: peers[p] ^ key)[:k])


def test_covered_prefix() -> None:
    rng = random.Random(1)
    peers = [rng.getrandbits(BITS) for _ in range(500)]
    for _ in range(50):
        target = rng.getrandbits(BITS)
        closest = sorted(peers, key=lambda p: p ^ target)[:20]
        c = covered_prefix(target, closest)
        assert c is not None and c.contains(target)
        # Every peer under the covered prefix is in the answer, and the answer is not all under it.
        assert {p for p in peers if c.contains(p)} <= set(closest)
        assert not all(c.contains(p) for p in closest)
    # A short answer is not taken for the whole network.
    assert covered_prefix(0b1000 << 252, [0b1001 << 252, 0b1010 << 252]) == Prefix.parse("100")
    assert covered_prefix(5, []) is None


def test_gaps_and_prefix_basics() -> None:
    p = Prefix.parse("01")
    assert gaps(p, []) == [p]
    assert gaps(p, [Prefix.parse("0")]) == []
    assert gaps(p, [Prefix.parse("010"), Prefix.parse("0111")]) == [Prefix.parse("0110")]
    assert str(p) == "01*" and str(Prefix(0, 0)) == "*" and Prefix.parse("01*") == p
    assert p.covers(Prefix.parse("011")) and not Prefix.parse("011").covers(p)
    assert p.first >> (BITS - 2) == 1 and p.last >> (BITS - 2) == 1 and p.last - p.first == (1 << (BITS - 2)) - 1
    assert common_prefix_length(p.first, p.last) == 2
    with pytest.raises(ValueError):
        Prefix(2, 4)


def test_minimal_regions_keep_k_peers_each() -> None:
    rng = random.Random(2)
    region = Prefix.parse("1")
    peers = sorted(under(region, rng) for _ in range(300))
    parts = minimal_regions(region, peers, 20)
    assert len(parts) > 4
    # They tile the region, each holds >= 20 peers, and no part could split further.
    assert sum(1 << (BITS - p.length) for p in parts) == 1 << (BITS - region.length)
    for p in parts:
        inside = [x for x in peers if p.contains(x)]
        assert len(inside) >= 20
        halves = [sum(1 for x in inside if p.child(b).contains(x)) for b in (0, 1)]
        assert min(halves) < 20


def test_preimages_hash_into_the_prefix() -> None:
    for text in ("0", "1011", "0110100111"):
        prefix = Prefix.parse(text)
        mh = preimage_under(prefix)
        assert mh[:2] == b"\x12\x20" and len(mh) == 34
        assert prefix.contains(int.from_bytes(hashlib.sha256(mh).digest(), "big"))


def test_region_turns_spread_evenly_over_the_interval() -> None:
    order = random.Random(3).getrandbits(BITS)
    interval = 22 * 3600.0
    offsets = sorted(region_offset(Prefix(4, b), order, interval) for b in range(16))
    assert offsets == [interval * i / 16 for i in range(16)]  # distinct, evenly spaced
    assert region_offset(Prefix(0, 0), order, interval) == 0
    # The region "order" itself goes first; a child's turn is inside its parent's slot.
    first = Prefix.of(order, 4)
    assert region_offset(first, order, interval) == 0
    assert 0 <= region_offset(first.child(1), order, interval) < interval / 16
    start = 1_000_000.0
    t = next_turn(Prefix(4, 3), order, interval, start, after=start + 5 * interval + 1)
    assert start + 5 * interval < t <= start + 6 * interval + interval
    assert (t - start) % interval == pytest.approx(region_offset(Prefix(4, 3), order, interval))


def test_retry_backoff_doubles_to_a_ceiling() -> None:
    assert [retry_delay(a, 300, 3600) for a in (1, 2, 3, 4, 5, 9)] == [300, 600, 1200, 2400, 3600, 3600]
