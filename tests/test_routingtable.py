"""The k-bucket routing table: exact closest peers, seniority, IP diversity."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtstore.kadkey import Key
from dhtstore.peerid import PeerId
from dhtstore.routingtable.api import RoutingTable
from dhtstore.routingtable.kbuckets import KBucketTable
from dhtstore.routingtable.xorsearch import closest_keys
from dhtstore.types import PeerInfo

PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def peer(rng: random.Random, addrs: tuple[bytes, ...] = ()) -> PeerInfo:
    return PeerInfo(PeerId(PREFIX + rng.randbytes(32)), addrs)


def ip4(a: int, b: int, c: int, d: int) -> bytes:
    return bytes([0x04, a, b, c, d, 0x06, 0x0F, 0xA1])


def brute_closest(table: KBucketTable, key: Key, n: int) -> list[PeerId]:
    return [p.peer_id for p in sorted(table.peers(), key=lambda p: Key.for_peer(p.peer_id).value ^ key.value)[:n]]


def test_implements_the_api():
    assert isinstance(KBucketTable(Key(0)), RoutingTable)


def test_local_closest_peers_equals_brute_force():
    rng = random.Random(1)
    me = peer(rng)
    table = KBucketTable(Key.for_peer(me.peer_id))
    for _ in range(3000):
        table.add(peer(rng), 0.0)
    assert len(table) > 100
    for n in (1, 5, 20, 50, 1000):
        for _ in range(50):
            target = Key.hash(rng.randbytes(8))
            assert [p.peer_id for p in table.local_closest_peers(target, n)] == brute_closest(table, target, n)
    own = Key.for_peer(me.peer_id)
    assert [p.peer_id for p in table.local_closest_peers(own, 20)] == brute_closest(table, own, 20)


def test_never_holds_itself_and_add_is_idempotent():
    rng = random.Random(2)
    me = peer(rng)
    table = KBucketTable(Key.for_peer(me.peer_id))
    assert not table.add(me, 0.0)
    other = peer(rng)
    assert table.add(other, 0.0) and table.add(other, 1.0)
    assert len(table) == 1 and other.peer_id in table and me.peer_id not in table


def test_newer_addresses_replace_old_ones():
    rng = random.Random(3)
    table = KBucketTable(Key(0))
    p = peer(rng, (ip4(1, 2, 3, 4),))
    table.add(p, 0.0)
    table.add(PeerInfo(p.peer_id, (ip4(5, 6, 7, 8),)), 1.0)
    assert table.get(p.peer_id).addrs == (ip4(5, 6, 7, 8),)


def full_bucket_zero(rng: random.Random, k: int = 20) -> tuple[KBucketTable, list[PeerInfo], PeerInfo]:
    """A table whose bucket 0 is full, and a newcomer for bucket 0."""
    table = KBucketTable(Key(0), bucket_size=k)
    members, newcomer = [], None
    while newcomer is None:
        p = peer(rng)
        if Key.for_peer(p.peer_id).common_prefix_length(Key(0)) != 0:
            continue
        if len(members) < k:
            assert table.add(p, 0.0)
            members.append(p)
        else:
            newcomer = p
    return table, members, newcomer


def test_seniority_full_bucket_keeps_its_live_peers():
    table, members, newcomer = full_bucket_zero(random.Random(4))
    assert not table.add(newcomer, 5.0)
    assert all(m.peer_id in table for m in members)


def test_newcomer_replaces_a_peer_that_failed_a_liveness_check():
    table, members, newcomer = full_bucket_zero(random.Random(5))
    table.mark_failed(members[3].peer_id)
    assert table.add(newcomer, 5.0)
    assert newcomer.peer_id in table and members[3].peer_id not in table
    assert len(table) == 20


def test_a_peer_useful_again_is_no_longer_replaceable():
    table, members, newcomer = full_bucket_zero(random.Random(6))
    table.mark_failed(members[0].peer_id)
    table.mark_useful(members[0].peer_id, 9.0)
    assert not table.add(newcomer, 10.0)
    assert table.last_useful(members[0].peer_id) == 9.0


def test_remove():
    rng = random.Random(7)
    table = KBucketTable(Key(0))
    p = peer(rng)
    table.add(p, 0.0)
    assert table.remove(p.peer_id) and not table.remove(p.peer_id)
    assert len(table) == 0 and table.local_closest_peers(Key(5), 20) == []


def test_ip_diversity_limits_per_group_and_per_bucket():
    rng = random.Random(8)
    table = KBucketTable(Key(0), ip_diversity=True)
    same_16 = [peer(rng, (ip4(7, 7, i, 1),)) for i in range(40)]
    accepted = [p for p in same_16 if table.add(p, 0.0)]
    assert len(accepted) == 3  # one /16 group: 3 in the whole table
    per_bucket: dict[int, int] = {}
    for p in accepted:
        cpl = Key.for_peer(p.peer_id).common_prefix_length(Key(0))
        per_bucket[cpl] = per_bucket.get(cpl, 0) + 1
    assert max(per_bucket.values()) <= 2
    # other groups are unaffected; removing frees room in the group
    assert table.add(peer(rng, (ip4(8, 8, 0, 1),)), 0.0)
    table.remove(accepted[0].peer_id)
    assert any(table.add(p, 0.0) for p in same_16 if p not in accepted)


def test_ip_diversity_off_by_default():
    rng = random.Random(9)
    table = KBucketTable(Key(0))
    assert sum(table.add(peer(rng, (ip4(7, 7, i, 1),)), 0.0) for i in range(10)) == 10


def test_a_wide_table_holding_5000_peers_is_still_exact():
    rng = random.Random(10)
    table = KBucketTable(Key.hash(b"wide"), bucket_size=5000)
    for _ in range(5000):
        assert table.add(peer(rng), 0.0)
    for _ in range(30):
        target = Key.hash(rng.randbytes(8))
        assert [p.peer_id for p in table.local_closest_peers(target, 20)] == brute_closest(table, target, 20)


# wide keys, and small ones that share long prefixes
KEYS = st.integers(min_value=0, max_value=(1 << 256) - 1) | st.integers(min_value=0, max_value=64)


@settings(max_examples=300, deadline=None)
@given(keys=st.sets(KEYS, max_size=80), target=KEYS, n=st.integers(min_value=0, max_value=90))
def test_closest_keys_equals_brute_force(keys, target, n):
    ordered = sorted(keys)
    assert closest_keys(ordered, target, n) == sorted(ordered, key=lambda k: k ^ target)[:n]
