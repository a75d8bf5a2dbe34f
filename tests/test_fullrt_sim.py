"""The full routing table with real components: the crawler over the simulated network
(real tables, routers and request handlers of 200 nodes), written to a real store,
reloaded as after a restart, and answering a lookup in one round of requests.

The simulation runs on the test's own event loop with zero latency (every request is
one trip through the real handlers), so the store is a real SQLite/PostgreSQL one."""

from __future__ import annotations

import pytest

from dhtstore.data.engine import make_engine
from dhtstore.kadkey import Key
from dhtstore.routing.router import KademliaRouter
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.rtrefresh.crawler import CPLS, Crawler, prefix_preimages
from dhtstore.sim import SimConfig, SimNetwork
from dhtstore.types import MessageType

pytestmark = pytest.mark.anyio

NODES = 200


@pytest.fixture(scope="module")
def preimages() -> list[bytes]:
    return prefix_preimages()


def test_keys_for_a_peer_have_each_cpl_once(preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=2, seed=1))
    peer = net.node(1)
    crawler = Crawler(FullTable(net.node(0).key), net.node(0).messenger, preimages=preimages)
    cpls = [Key.hash(k).common_prefix_length(peer.key) for k in crawler.keys_for(peer.peer_id)]
    assert cpls == list(range(CPLS))


async def _crawl_to_the_end(crawler: Crawler) -> int:
    rounds = 0
    for rounds in range(1, 100):  # bounded: 200 nodes take a handful of rounds
        if not await crawler.crawl_round():
            break
    return rounds


async def test_crawl_persist_restart_one_hop_and_failing_peer_leaves(store_url: str, preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=NODES, seed=5, latency=(0.0, 0.0)))
    me = net.node(0)
    everyone_else = {n.peer_id for n in net.nodes[1:]}
    engine = make_engine(store_url)
    try:
        table = FullTable(me.key, engine, wall_clock=net.wall_clock)
        for peer in me.table.peers()[:3]:  # a few bootstrap peers
            table.add(peer, net.now())
        crawler = Crawler(table, me.messenger, parallelism=8, rate=10_000, clock=net.now, wall_clock=net.wall_clock, preimages=preimages)
        assert await _crawl_to_the_end(crawler) < 99
        assert {p.peer_id for p in table.peers()} == everyone_else
        assert crawler.status()["coverage"] == 1.0
        assert crawler.counters["requests"] == CPLS * (NODES - 1)  # each server visited once
        await table.flush()

        # Restart: a new table from the store, no crawl, no warm-up.
        restarted = FullTable(me.key, engine, wall_clock=net.wall_clock)
        assert await restarted.load() == NODES - 1
        router = KademliaRouter(me.info, restarted, me.messenger, me.validator, clock=net.now, one_hop_min_peers=20)
        iterative = KademliaRouter(me.info, me.table, me.messenger, me.validator, clock=net.now)
        for i in range(5):
            key = b"target %d" % i
            before = net.messages[MessageType.FIND_NODE]
            closest = await router.find_closest_peers(key, 20)
            assert net.messages[MessageType.FIND_NODE] - before == 20  # one round: the 20 candidates
            assert [p.peer_id for p in closest] == net.true_closest(Key.hash(key), 20, exclude=me.peer_id)
            assert [p.peer_id for p in await iterative.find_closest_peers(key, 20)] == [p.peer_id for p in closest]

        # A peer that stops answering leaves after max_failures failed visits, and the store follows.
        gone = net.node(7)
        net.set_online(gone, False)
        again = Crawler(restarted, me.messenger, clock=net.now, wall_clock=net.wall_clock, preimages=preimages)
        for visit in range(restarted.max_failures):
            assert gone.peer_id in restarted
            assert not await again.visit(gone.info)
        assert gone.peer_id not in restarted and again.counters["removed"] == 1
        await restarted.flush()
        assert await FullTable(me.key, engine).load() == NODES - 2
    finally:
        await engine.dispose()


async def test_every_peer_is_due_again_after_the_interval_and_a_failing_one_sooner(preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=40, seed=6, latency=(0.0, 0.0)))
    me = net.node(0)
    offset = [0.0]

    def wall() -> float:
        return net.wall_clock() + offset[0]

    table = FullTable(me.key, wall_clock=wall)
    table.add(net.node(1).info, 0.0)
    crawler = Crawler(table, me.messenger, interval=3600, retry_after=600, clock=net.now, wall_clock=wall, preimages=preimages)
    await _crawl_to_the_end(crawler)
    assert len(table) == 39 and crawler.next_batch(100) == []  # everything crawled: nothing due

    down = net.node(2)
    net.set_online(down, False)
    offset[0] = 3601.0  # an hour later every peer is due once more
    assert await crawler.crawl_round(limit=100) == 39
    assert table.failures(down.peer_id) == 1 and crawler.next_batch(100) == []  # the failed one waits retry_after
    offset[0] += 601.0
    assert [p.peer_id for p in crawler.next_batch(100)] == [down.peer_id]  # failing: first, and alone


async def test_an_unresponsive_server_is_asked_once_per_retry_after(preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=60, seed=8, latency=(0.0, 0.0), unresponsive=0.2, request_timeout=1.0))
    me = net.node(0)
    me.responsive = True
    table = FullTable(me.key, wall_clock=net.wall_clock)
    for peer in me.table.peers():
        if net.by_id[peer.peer_id].responsive:
            table.add(peer, 0.0)
            break
    crawler = Crawler(table, me.messenger, timeout=2.0, clock=net.now, wall_clock=net.wall_clock, preimages=preimages)
    await _crawl_to_the_end(crawler)
    silent = [n for n in net.nodes[1:] if not n.responsive]
    assert {p.peer_id for p in table.peers()} == {n.peer_id for n in net.live_nodes()} - {me.peer_id}
    assert crawler.counters["visits_failed"] == len(silent)  # each discovered once, asked once, never added


async def test_a_silent_server_is_asked_again_ever_later_up_to_the_interval(preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=10, seed=9, latency=(0.0, 0.0), request_timeout=0.01))
    me, silent = net.node(0), net.node(1)
    silent.responsive = False
    offset = [0.0]

    def wall() -> float:
        return net.wall_clock() + offset[0]

    table = FullTable(me.key, wall_clock=wall)
    crawler = Crawler(table, me.messenger, interval=3600, retry_after=600, clock=net.now, wall_clock=wall, preimages=preimages)
    waits = []
    for _ in range(5):
        start = offset[0]
        for step in range(0, 4000, 100):  # until the crawler takes it again (named again every 100 s)
            offset[0] = start + step
            crawler._discover([silent.info])
            if await crawler.crawl_round(limit=10):
                break
        waits.append(offset[0] - start)
    assert crawler.counters["visits_failed"] == 5 and silent.peer_id not in table
    # the first visit at once, then retry_after, doubling each silence, never past the interval
    assert waits == [0.0, 600.0, 1200.0, 2400.0, 3600.0]
