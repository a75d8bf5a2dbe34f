"""The full routing table: exact closest peers over the whole network, consecutive
failures, and the write-through to ``network_peers`` (real SQLite and PostgreSQL)."""

from __future__ import annotations

import math
import random

import pytest
from sqlalchemy import func, select, text

from dhtstore.data.engine import make_engine
from dhtstore.data.fastread import open_reader
from dhtstore.data.models import NetworkPeerRow
from dhtstore.kadkey import Key
from dhtstore.peerid import PeerId
from dhtstore.routingtable.api import NetworkTable, RoutingTable
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.types import PeerInfo

PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001


def peer(rng: random.Random) -> PeerInfo:
    return PeerInfo(PeerId(PREFIX + rng.randbytes(32)), (ADDR,))


def brute_closest(peers: list[PeerInfo], key: Key, n: int) -> list[PeerId]:
    return [p.peer_id for p in sorted(peers, key=lambda p: Key.for_peer(p.peer_id).value ^ key.value)[:n]]


def test_implements_the_apis() -> None:
    table = FullTable(Key(0))
    assert isinstance(table, RoutingTable) and isinstance(table, NetworkTable)


def test_every_server_fits_and_closest_is_exact() -> None:
    rng = random.Random(7)
    table = FullTable(Key.for_peer(peer(rng).peer_id))
    peers = [peer(rng) for _ in range(5000)]
    assert all(table.add(p, 0.0) for p in peers)
    assert len(table) == 5000  # no buckets: a k-bucket table would keep a few hundred
    for _ in range(50):
        key = Key(rng.getrandbits(256))
        assert [p.peer_id for p in table.local_closest_peers(key, 20)] == brute_closest(peers, key, 20)


def test_a_peer_leaves_after_max_failures_consecutive_failures_only() -> None:
    rng = random.Random(8)
    table = FullTable(Key(0), max_failures=3)
    a = peer(rng)
    table.add(a, 0.0)
    table.mark_failed(a.peer_id)
    table.mark_failed(a.peer_id)
    table.mark_useful(a.peer_id, 1.0)  # an answer resets the count
    table.mark_failed(a.peer_id)
    table.mark_failed(a.peer_id)
    assert a.peer_id in table and table.failures(a.peer_id) == 2
    table.mark_failed(a.peer_id)
    assert a.peer_id not in table and table.local_closest_peers(Key(0), 5) == []


def test_crawl_queue_takes_failing_then_never_then_oldest() -> None:
    rng = random.Random(9)
    clock = [1000.0]
    table = FullTable(Key(0), wall_clock=lambda: clock[0])
    old, newer, never, failing = (peer(rng) for _ in range(4))
    for p in (old, newer, never, failing):
        table.add(p, 0.0)
    table.mark_crawled(old.peer_id)
    clock[0] = 2000.0
    table.mark_crawled(newer.peer_id)
    table.mark_crawled(failing.peer_id)
    table.mark_failed(failing.peer_id)
    assert [p.peer_id for p in table.crawl_queue(3000, 10)] == [failing.peer_id, never.peer_id, old.peer_id, newer.peer_id]
    assert [p.peer_id for p in table.crawl_queue(1500, 10)] == [never.peer_id, old.peer_id]
    assert table.next_crawl_due() == float("-inf") and table.crawled_since(2000) == 2


@pytest.mark.anyio
async def test_write_through_in_batches_and_reload(store_url: str) -> None:
    rng = random.Random(10)
    engine = make_engine(store_url)
    try:
        local = Key.for_peer(peer(rng).peer_id)
        table = FullTable(local, engine)
        peers = [peer(rng) for _ in range(300)]
        for p in peers:
            table.add(p, 0.0)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(NetworkPeerRow))).scalar_one() == 0  # nothing per add
        assert await table.flush() == 300
        table.mark_crawled(peers[0].peer_id)
        table.note_identify(peers[0].peer_id, "kubo/0.30.0", ("/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"))
        for _ in range(3):
            table.mark_failed(peers[1].peer_id)  # leaves
        table.mark_failed(peers[2].peer_id)
        assert await table.flush() == 4  # two rows changed, one deleted, one identified
        assert await table.flush() == 0

        reloaded = FullTable(local, engine)
        assert await reloaded.load(page=7) == 299  # in pages, as a large table loads
        key = Key(rng.getrandbits(256))
        assert reloaded.local_closest_peers(key, 20) == table.local_closest_peers(key, 20)
        assert reloaded.failures(peers[2].peer_id) == 1 and reloaded.crawled_since(0) == 1
        async with engine.connect() as conn:
            agents = dict((await conn.execute(text("SELECT agent, servers FROM v_network_agents"))).all())
            kad_key = (await conn.execute(select(NetworkPeerRow.kad_key).where(NetworkPeerRow.peer_id == peers[0].peer_id.to_bytes()))).scalar_one()
        assert agents == {"kubo/0.30.0": 1, "": 298}
        assert bytes(kad_key) == Key.for_peer(peers[0].peer_id).value.to_bytes(32, "big")
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_the_fast_read_path_loads_the_same_table_and_skips_damaged_rows(store_url: str) -> None:
    rng = random.Random(11)
    engine = make_engine(store_url)
    try:
        local = Key.for_peer(peer(rng).peer_id)
        table = FullTable(local, engine)
        identity = PeerInfo(PeerId(bytes([0, 36]) + rng.randbytes(36)), (ADDR,))  # an inlined (identity) peer id
        for p in [peer(rng) for _ in range(250)] + [identity]:
            table.add(p, 0.0)
        await table.flush()
        async with engine.begin() as conn:  # rows no longer valid peer ids (damage, or an older writer)
            row = FullTable._row(table._entries[identity.peer_id.to_bytes()], 0)
            short, wrong_length = PREFIX[:2] + rng.randbytes(31), b"\x12\x21" + rng.randbytes(33)
            for bad in (short, wrong_length, bytes([0, 50]) + rng.randbytes(50), b"\x05"):
                damaged = {**row, "peer_id": bad, "kad_key": rng.randbytes(32)}
                await conn.execute(NetworkPeerRow.__table__.insert().values(damaged))
        async with open_reader(engine) as reader:
            assert reader is not None
            fast = FullTable(local, engine)
            assert await fast.load(page=60, reader=reader) == 251
        slow = FullTable(local, engine)
        assert await slow.load(page=60) == 251
        assert identity.peer_id in fast and identity.peer_id in slow
        for _ in range(5):
            key = Key(rng.getrandbits(256))
            assert fast.local_closest_peers(key, 20) == slow.local_closest_peers(key, 20) == table.local_closest_peers(key, 20)
    finally:
        await engine.dispose()


def crawl_rank(table: FullTable, p: PeerInfo) -> tuple[int, int]:
    crawled = table._entries[p.peer_id.to_bytes()].crawled_at
    return (-table.failures(p.peer_id), -1 if crawled is None else crawled)


def reference_crawl_queue(table: FullTable, crawled_before: float, limit: int) -> list[tuple[int, int]]:
    """The order ``crawl_queue`` promises, by a scan of every peer (its former way)."""
    ranks = [crawl_rank(table, p) for p in table.peers()]
    return sorted(r for r in ranks if r[1] < crawled_before)[:limit]


def test_crawl_queue_keeps_its_order_through_visits_failures_answers_reloads_and_a_clock_going_back() -> None:
    rng = random.Random(10)
    clock = [1000.0]
    table = FullTable(Key(0), wall_clock=lambda: clock[0], max_failures=3)
    peers = [peer(rng) for _ in range(300)]
    for p in peers[:200]:
        table.add(p, 0.0)
    for step in range(3000):
        p = rng.choice(peers)
        action = rng.random()
        if action < 0.5:
            table.mark_crawled(p.peer_id)
        elif action < 0.65:
            table.mark_failed(p.peer_id)
        elif action < 0.75:
            table.mark_useful(p.peer_id, clock[0])
        elif action < 0.85:
            table.add(p, 0.0)
        else:
            table.remove(p.peer_id)
        clock[0] += rng.choice((0, 1, 1, 2, 5)) if step % 500 else -300  # now and then the clock goes back
        before, limit = clock[0] - rng.randrange(0, 400), rng.choice((1, 5, 32, 1000))
        got = table.crawl_queue(before, limit)
        rank = {q.peer_id: crawl_rank(table, q) for q in got}
        assert [rank[q.peer_id] for q in got] == reference_crawl_queue(table, before, limit)
        assert len(set(rank)) == len(got)
        crawled = [e.crawled_at for e in table._entries.values()]
        assert table.next_crawl_due() == min((-math.inf if c is None else c for c in crawled), default=math.inf)


@pytest.mark.anyio
async def test_a_loaded_table_takes_the_same_crawl_order(sqlite_store_url: str) -> None:
    engine = make_engine(sqlite_store_url)
    rng = random.Random(11)
    clock = [5000.0]
    table = FullTable(Key(0), engine, wall_clock=lambda: clock[0])
    peers = [peer(rng) for _ in range(100)]
    for p in peers:
        table.add(p, 0.0)
    for p in rng.sample(peers, 80):
        clock[0] += rng.choice((-50, 1, 3))
        table.mark_crawled(p.peer_id)
    for p in rng.sample(peers, 10):
        table.mark_failed(p.peer_id)
    await table.flush()
    loaded = FullTable(Key(0), engine, wall_clock=lambda: clock[0])
    assert await loaded.load() == 100
    for before in (4900, 5000, 5100, 1e9):
        expected = reference_crawl_queue(table, before, 40)
        assert reference_crawl_queue(loaded, before, 40) == expected
        got = loaded.crawl_queue(before, 40)
        assert [crawl_rank(loaded, q) for q in got] == expected
    await engine.dispose()
