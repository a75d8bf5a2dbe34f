"""One crawl serves every head of a shared PostgreSQL store: the heads lease a fair
share of the keyspace's crawl shards, each crawler visits only its shards, and each
table reads in what the others crawled. Real PostgreSQL, the simulated network (real
tables, routers and handlers of 200 nodes), zero latency."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import select

from dhtstore.data.engine import make_engine
from dhtstore.data.models import CrawlClaimRow, NetworkPeerRow
from dhtstore.peerid import PeerId
from dhtstore.routingtable.api import KeyShards
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.rtrefresh.crawler import CPLS, Crawler, prefix_preimages
from dhtstore.rtrefresh.crawlshards import LEASE, CrawlShards, fair_share
from dhtstore.sim import SimConfig, SimNetwork
from dhtstore.sim.network import SimNode

pytestmark = pytest.mark.anyio

NODES = 200


@pytest.fixture(scope="module")
def preimages() -> list[bytes]:
    return prefix_preimages()


class Clock:
    """The simulation's wall clock, moved on by hand (leases, crawl intervals)."""

    def __init__(self, net: SimNetwork):
        self.net, self.offset = net, 0.0

    def __call__(self) -> float:
        return self.net.wall_clock() + self.offset


class Head:
    def __init__(self, node: SimNode, engine, clock: Callable[[], float], preimages: list[bytes]):
        self.node = node
        self.table = FullTable(node.key, engine, wall_clock=clock, shared=True)
        self.shards = CrawlShards(engine, str(node.peer_id), wall_clock=clock)
        self.crawler = Crawler(
            self.table, node.messenger, parallelism=8, rate=10_000, clock=node.network.now, wall_clock=clock, preimages=preimages
        )
        self.crawler.shards = KeyShards(self.shards.bits, frozenset())

    async def rebalance(self) -> None:
        self.crawler.shards = await self.shards.rebalance()


async def _rebalance(heads: list[Head], turns: int = 3) -> None:
    for _ in range(turns):  # a newcomer gets its share once the others gave theirs back
        for head in heads:
            await head.rebalance()


async def _crawl_until_done(heads: list[Head]) -> int:
    """Crawl rounds, each head in turn, flushing and reading in after each; bounded."""
    for rounds in range(1, 200):
        visited = 0
        for head in heads:
            visited += await head.crawler.crawl_round()
            await head.table.flush()
        for head in heads:
            await head.table.read_in()
        if not visited:
            return rounds
    raise AssertionError("the crawl did not end")


async def _crawled_rows(engine) -> dict[PeerId, int | None]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(NetworkPeerRow.peer_id, NetworkPeerRow.crawled_at))).all()
    return {PeerId(bytes(p)): c for p, c in rows}


def test_fair_shares_differ_by_one_and_sum_to_all() -> None:
    for heads in range(1, 20):
        names = [f"head{i:02d}" for i in range(heads)]
        shares = [fair_share(16, names, n) for n in names]
        assert sum(shares) == 16 and max(shares) - min(shares) <= 1


async def test_three_heads_share_one_crawl_and_take_over_a_stopped_head(pg_store_url: str, preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=NODES, seed=5, latency=(0.0, 0.0)))
    everyone = {n.peer_id for n in net.nodes}

    # The reference: one head alone crawls the whole network.
    alone = Crawler(FullTable(net.node(0).key), net.node(0).messenger, parallelism=8, rate=10_000,
                    clock=net.now, wall_clock=net.wall_clock, preimages=preimages)
    for peer in net.node(0).table.peers()[:3]:
        alone.table.add(peer, net.now())
    for _ in range(100):
        if not await alone.crawl_round():
            break
    one_head = alone.counters["requests"]
    assert one_head == CPLS * (NODES - 1)

    engine = make_engine(pg_store_url)
    clock = Clock(net)
    try:
        heads = [Head(net.node(i), engine, clock, preimages) for i in range(3)]
        for head in heads:  # each starts from three bootstrap peers of its own
            for peer in head.node.table.peers()[:3]:
                head.table.add(peer, net.now())
        await _rebalance(heads)
        held = [h.crawler.shards.shards for h in heads if h.crawler.shards is not None]
        assert sorted(len(s) for s in held) == [5, 5, 6]
        assert frozenset().union(*held) == frozenset(range(16)) and sum(map(len, held)) == 16  # disjoint
        async with engine.connect() as conn:  # the store says the same
            claims = (await conn.execute(select(CrawlClaimRow.shard, CrawlClaimRow.owner).where(CrawlClaimRow.expires_at > clock()))).all()
        assert sorted(claims) == sorted((s, h.shards.owner) for h in heads for s in h.crawler.shards.shards)  # type: ignore[union-attr]

        await _crawl_until_done(heads)
        rows = await _crawled_rows(engine)
        # Every server was crawled by one head or another (a head is not its own peer:
        # it is crawled by the others unless it sits in its own shards).
        self_sharded = {h.node.peer_id for h in heads if h.crawler.shards and h.node.key.value in h.crawler.shards}
        assert {p for p, c in rows.items() if c is not None} == everyone - self_sharded
        total = sum(h.crawler.counters["requests"] for h in heads)
        print(f"\nrequests for full coverage: 1 head {one_head}, 3 heads {total} ({total / one_head:.3f}x)")
        assert total <= 1.25 * one_head  # one crawl plus a few seeds, not 3x
        for head in heads:
            assert head.crawler.counters["requests"] < 0.6 * one_head  # each did about a third
            assert {p.peer_id for p in head.table.peers()} == everyone - {head.node.peer_id} - (self_sharded - {head.node.peer_id})
            assert head.table.adopted > 0

        # Head 2 stops (no renewal, no release). An interval later, once its lease is
        # over, heads 0 and 1 take its shards and crawl the whole network again.
        first_crawl = {p: c for p, c in rows.items() if c is not None}
        clock.offset += LEASE / 2
        stopped, live = heads[2], heads[:2]
        await _rebalance(live)
        assert all(not (s & stopped.crawler.shards.shards) for s in (h.crawler.shards.shards for h in live))  # type: ignore[union-attr]
        clock.offset += LEASE + 1
        await _rebalance(live)
        assert sorted(len(h.crawler.shards.shards) for h in live) == [8, 8]  # type: ignore[union-attr]
        clock.offset = 3601.0  # every peer is due again
        before = [h.crawler.counters["requests"] for h in live]
        await _crawl_until_done(live)
        recrawled = await _crawled_rows(engine)
        for peer, at in first_crawl.items():
            if peer not in {h.node.peer_id for h in live}:
                assert recrawled[peer] is not None and recrawled[peer] > at, peer  # type: ignore[operator]
        again = sum(h.crawler.counters["requests"] for h in live) - sum(before)
        print(f"requests for the next full coverage by the 2 heads left: {again} ({again / one_head:.3f}x)")
        assert again <= 1.1 * one_head and stopped.crawler.counters["requests"] == heads[2].crawler.counters["requests"]
    finally:
        await engine.dispose()


async def test_a_flush_never_overwrites_a_later_crawl(pg_store_url: str, preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=4, seed=2, latency=(0.0, 0.0)))
    engine = make_engine(pg_store_url)
    early, late = Clock(net), Clock(net)
    late.offset = 500.0
    try:
        stale = FullTable(net.node(0).key, engine, wall_clock=early, shared=True)
        fresh = FullTable(net.node(1).key, engine, wall_clock=late, shared=True)
        peer = net.node(3)
        for table in (stale, fresh):
            table.add(peer.info, 0.0)
        fresh.mark_crawled(peer.peer_id)
        await fresh.flush()
        crawled = (await _crawled_rows(engine))[peer.peer_id]
        assert crawled == int(late())

        stale.mark_crawled(peer.peer_id)  # 500 s earlier
        stale.mark_failed(peer.peer_id)
        await stale.flush()
        assert (await _crawled_rows(engine))[peer.peer_id] == crawled  # the later crawl stays
        assert await stale.read_in() >= 1  # and the stale table follows the store
        assert stale.failures(peer.peer_id) == 0
        assert stale.crawl_queue(int(late()) - 1, 10) == []

        older = FullTable(net.node(2).key, engine, wall_clock=early, shared=True)
        older.add(peer.info, 0.0)
        older.mark_crawled(peer.peer_id)
        older.remove(peer.peer_id)  # removed on an older crawl: the row crawled later stays
        await older.flush()
        assert (await _crawled_rows(engine))[peer.peer_id] == crawled
        fresh.remove(peer.peer_id)  # removed by who crawled it last: the row goes
        await fresh.flush()
        assert peer.peer_id not in await _crawled_rows(engine)
        for _ in range(30):  # the reconciling read-in drops what another head removed
            await stale.read_in()
        assert peer.peer_id not in stale
    finally:
        await engine.dispose()


def test_routing_status_shows_the_shards_this_head_holds(pg_store_url: str, tmp_path) -> None:
    from test_cli_db import invoke

    from dhtstore.config import read_identity

    data = tmp_path / "node"
    code, out = invoke("init", "--data-dir", str(data))
    assert code == 0, out
    me = str(read_identity(data / "identity.key").peer_id())

    async def claim() -> None:
        engine = make_engine(pg_store_url)
        try:
            ours, theirs = CrawlShards(engine, me), CrawlShards(engine, "12D3KooWOtherHead")
            for shards in (ours, theirs, ours, theirs):
                await shards.rebalance()
        finally:
            await engine.dispose()

    import anyio

    anyio.run(claim)
    code, out = invoke("routing", "status", "--data-dir", str(data), "--store", pg_store_url, "--json")
    assert code == 0, out
    figures = json.loads(out)
    assert figures["head"] == me and len(figures["shards"]) == 8
    assert sorted(figures["shards"] + figures["shards_by_head"]["12D3KooWOtherHead"]) == list(range(16))
    code, out = invoke("routing", "status", "--data-dir", str(data), "--store", pg_store_url)
    assert "crawl shards held: 8 by this head (default), 2 heads share the crawl" in out, out
    assert f"{me} (this head): " in out


async def test_a_newcomer_gets_its_share_and_a_clean_exit_hands_shards_over_at_once(store_url: str) -> None:
    import anyio

    now = [1_900_000_000.0]
    engine = make_engine(store_url)
    try:
        a, b, c = (CrawlShards(engine, name, wall_clock=lambda: now[0]) for name in ("head-a", "head-b", "head-c"))
        assert len((await a.rebalance()).shards) == 16  # alone: everything
        assert (await b.rebalance()).shards == frozenset()  # nothing free yet
        assert len((await a.rebalance()).shards) == 8  # a gives back the half over its share
        assert len((await b.rebalance()).shards) == 8 and not a.held.shards & b.held.shards
        assert a.counters["shards_released"] == 8 and b.counters["shards_taken"] == 8

        if engine.dialect.name == "postgresql":  # heads rebalancing at once take turns: never a shard twice
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    for head in (a, b, c):
                        tg.start_soon(head.rebalance)
            for _ in range(2):
                for head in (a, b, c):
                    await head.rebalance()
            held = [h.held.shards for h in (a, b, c)]
            assert sorted(map(len, held)) == [5, 5, 6] and len(frozenset().union(*held)) == 16
            await c.release()

        now[0] += LEASE / 2
        await b.release()  # a clean exit: no wait for the lease
        assert len((await a.rebalance()).shards) == 16
        now[0] += LEASE / 2  # a keeps its shards by renewing them past its first lease
        assert len((await a.rebalance()).shards) == 16
        assert (await b.rebalance()).shards == frozenset()  # back: waits for a to give some back
    finally:
        await engine.dispose()


async def test_a_sharded_crawler_covers_its_shards_and_seeds_each_other_shard_once(preimages: list[bytes]) -> None:
    net = SimNetwork(SimConfig(nodes=NODES, seed=9, latency=(0.0, 0.0)))
    me = net.node(0)
    table = FullTable(me.key, wall_clock=net.wall_clock)
    for peer in me.table.peers()[:3]:
        table.add(peer, net.now())
    crawler = Crawler(table, me.messenger, parallelism=8, rate=10_000, clock=net.now, wall_clock=net.wall_clock, preimages=preimages)
    crawler.shards = mine = KeyShards(4, frozenset(range(8)))  # the first half of the keyspace
    for _ in range(100):
        if not await crawler.crawl_round():
            break
    ours = {n.peer_id for n in net.nodes[1:] if n.key.value in mine}
    held = {p.peer_id for p in table.peers()}
    assert ours <= held  # every server of our shards
    foreign = held - ours
    seeds = crawler.counters["seed_visits"]
    assert 0 < seeds <= 8 and crawler.counters["visits"] == len(ours) + seeds  # one seed per other shard at most
    assert len(foreign) <= seeds + 3  # the seeds and the bootstrap peers: no crawl of the other half
    assert crawler.status()["shards"] == list(range(8))


async def test_a_head_cut_off_from_the_store_stops_crawling_its_shards_when_the_lease_is_over() -> None:
    import anyio

    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # nothing listens there
    now = [1_900_000_000.0]
    seen: list[frozenset[int]] = []
    try:
        shards = CrawlShards(engine, "head-a", lease=2, wall_clock=lambda: now[0])
        shards.held, shards.renewed_at = KeyShards(4, frozenset({1, 2})), now[0]
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(shards.run, lambda held: seen.append(held.shards))
                await anyio.sleep(0.2)
                assert seen == []  # the lease still runs: the shards stay
                now[0] += 2
                while not seen:
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        assert seen == [frozenset()]
    finally:
        await engine.dispose()
