"""Issue 15 item 5: how many crawl requests a full coverage of the network costs with 1
head and with H heads sharing one PostgreSQL store (crawl shards), on the simulated
network (real tables, routers and handlers; a share of servers never answer).

Reference in the same run: one head with its own table crawls from 3 bootstrap peers
until nothing is due. Then H heads on a fresh PostgreSQL database (created and dropped
here) lease their fair shares, crawl in turns (each flushing and reading in the others'
rows) until nothing is due: the cold coverage; an interval later they crawl once more:
the steady coverage. Fails when a coverage misses a live server or a head's table
lacks one, and when the heads' total is not below 2x one head's.

    python scripts/bench_shared_crawl.py --nodes 2000 --heads 1,3
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from dhtstore.data.engine import make_engine
from dhtstore.data.models import NetworkPeerRow
from dhtstore.data.schema import create_or_upgrade
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.rtrefresh.crawler import Crawler, prefix_preimages
from dhtstore.rtrefresh.crawlshards import CrawlShards
from dhtstore.sim import SimConfig, SimNetwork


async def crawl_until_done(pairs: list[tuple[Crawler, FullTable]], shared: bool) -> None:
    for rounds in range(1, 10_000):
        visited = 0
        for crawler, table in pairs:
            visited += await crawler.crawl_round()
            if shared:
                await table.flush()
        if shared:
            for _, table in pairs:
                await table.read_in()
        if rounds % 20 == 0:
            print(f"  round {rounds}: {sum(c.counters['requests'] for c, _ in pairs):,} requests", file=sys.stderr)
        if not visited:
            return
    raise SystemExit("the crawl did not end")


async def main(args: argparse.Namespace) -> None:
    net = SimNetwork(SimConfig(nodes=args.nodes, seed=args.seed, latency=(0.0, 0.0), unresponsive=args.unresponsive, request_timeout=1.0))
    for node in net.nodes[: max(args.heads)]:
        node.responsive = True
    live = {n.peer_id for n in net.live_nodes() if n.responsive}
    preimages = prefix_preimages()
    offset = [0.0]

    def wall() -> float:
        return net.wall_clock() + offset[0]

    def crawler_for(index: int, table: FullTable) -> Crawler:
        node = net.node(index)
        for peer in node.table.peers():
            if len(table) >= 3:
                break
            if net.by_id[peer.peer_id].responsive:
                table.add(peer, net.now())
        return Crawler(table, node.messenger, timeout=2.0, parallelism=32, rate=1e9, clock=net.now, wall_clock=wall, preimages=preimages)

    alone_table = FullTable(net.node(0).key, wall_clock=wall)
    alone = crawler_for(0, alone_table)
    await crawl_until_done([(alone, alone_table)], shared=False)
    one = alone.counters["requests"]
    if {p.peer_id for p in alone_table.peers()} != live - {net.node(0).peer_id}:
        raise SystemExit("one head's crawl missed live servers")
    offset[0] += 3601
    before = alone.counters["requests"]
    await crawl_until_done([(alone, alone_table)], shared=False)
    one_steady = alone.counters["requests"] - before
    print(f"1 head alone (no store, the reference): cold coverage {one:,} requests, steady coverage {one_steady:,}")

    base = make_url(args.pg)
    admin = await asyncpg.connect(user=base.username, password=base.password, host=base.host, port=base.port or 5432, database=base.database)
    try:
        for count in args.heads:
            name = f"dhtstore_bench_{secrets.token_hex(4)}"
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                await shared_run(net, count, base.set(database=name).render_as_string(hide_password=False), crawler_for, wall, offset, live, one, one_steady)
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def shared_run(net: SimNetwork, count: int, url: str, crawler_for, wall, offset: list[float], live: set, one: int, one_steady: int) -> None:  # type: ignore[no-untyped-def]
    """``count`` heads on one fresh PostgreSQL store: a cold and a steady coverage."""
    await create_or_upgrade(url)
    engine = make_engine(url)
    try:
        heads = []
        for i in range(count):
            table = FullTable(net.node(i).key, engine, wall_clock=wall, shared=True)
            heads.append((crawler_for(i, table), table, CrawlShards(engine, str(net.node(i).peer_id), wall_clock=wall)))

        async def rebalance() -> None:
            for _ in range(3):  # a newcomer gets its share once the others gave theirs back
                for crawler, _, shards in heads:
                    crawler.shards = await shards.rebalance()

        await rebalance()
        pairs = [(c, t) for c, t, _ in heads]
        await crawl_until_done(pairs, shared=True)
        cold_each = [c.counters["requests"] for c, _ in pairs]
        cold = sum(cold_each)
        seeds = sum(c.counters["seed_visits"] for c, _ in pairs)
        async with engine.connect() as conn:
            crawled = (await conn.execute(select(func.count()).where(NetworkPeerRow.crawled_at.is_not(None)))).scalar_one()
        for _, table in pairs:
            if len(table) < 0.99 * (len(live) - count):
                raise SystemExit(f"a head's table holds {len(table)} of {len(live)} live servers")
        if crawled < len(live) - count:
            raise SystemExit(f"the heads' crawl covered {crawled} of {len(live)} live servers")
        offset[0] += 3601  # every peer due again; the leases ran out too: the heads lease afresh
        await rebalance()
        await crawl_until_done(pairs, shared=True)
        steady_each = [c.counters["requests"] - b for (c, _), b in zip(pairs, cold_each, strict=True)]
        steady = sum(steady_each)
    finally:
        await engine.dispose()
    print(
        f"{count} head(s) on PostgreSQL: cold coverage {cold:,} requests ({cold / one:.3f}x one head alone; {seeds} seed visits),"
        f" steady {steady:,} ({steady / one_steady:.3f}x); steady per head {', '.join(f'{s:,}' for s in steady_each)};"
        f" rows crawled {crawled:,} of {len(live):,} live servers"
    )
    if cold >= 2 * one or steady >= 2 * one_steady:
        raise SystemExit("the heads crawled the network more than once over")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--heads", type=lambda v: [int(n) for n in v.split(",")], default=[1, 3], help="head counts, e.g. 1,3")
    parser.add_argument("--unresponsive", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    asyncio.run(main(parser.parse_args()))
