"""The full routing table: exact closest peers over the whole network, consecutive
failures, and the write-through to ``network_peers`` (real SQLite and PostgreSQL)."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select, text

from dhtstore.data.engine import make_engine
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
