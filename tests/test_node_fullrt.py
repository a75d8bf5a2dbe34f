"""``routing_table="full"`` on real nodes over loopback TCP: the crawler finds every
server from one bootstrap peer, the table is in the store, and a restarted node routes
from it at once, asking each candidate once."""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack

import anyio
import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, select
from test_node import make_store, wait_until  # noqa: F401  (make_store is a fixture)

from dhtstore.data.models import NetworkPeerRow
from dhtstore.kadkey import Key
from dhtstore.node import Node
from dhtstore.peerid import PeerId

pytestmark = pytest.mark.anyio

SERVERS = 6


def _find_node_served(servers: list[Node]) -> list[int]:
    return [s.handler.counters.get(("FIND_NODE", "ok"), 0) for s in servers]


async def test_full_table_crawls_persists_and_routes_in_one_round_after_restart(make_store, loopback_options):  # noqa: F811
    store = make_store()
    async with AsyncExitStack() as stack:
        servers: list[Node] = []
        for i in range(SERVERS):  # a chain: each knows the one before it
            boot = [servers[-1].addresses()[0]] if servers else []
            servers.append(await stack.enter_async_context(Node.start(loopback_options(make_store(), boot))))
        everyone = {s.peer_id for s in servers}
        full = dataclasses.replace(loopback_options(store, [servers[-1].addresses()[0]]), routing_table="full")
        async with Node.start(full) as node:
            assert node.crawler is not None
            await wait_until(lambda: {p.peer_id for p in node.table.peers()} == everyone, timeout=60)
            await wait_until(lambda: node.table.crawled_since(0) == SERVERS, timeout=60)
            scrape = generate_latest(node.metrics.registry).decode()
            answered = f'dhtstore_crawler_visits_total{{identity="default",outcome="answered",peer_id="{node.peer_id}"}}'
            assert any(line.startswith(answered) and float(line.split()[-1]) >= SERVERS for line in scrape.splitlines()), scrape
        async with Node.start(dataclasses.replace(full, bootstrap=[])) as restarted:  # same identity and store
            # Loaded from network_peers before any network contact: no warm-up.
            assert {p.peer_id for p in restarted.table.peers()} == everyone
            await restarted.upkeep.bootstrapped.wait()
            before = _find_node_served(servers)
            key = b"some key"
            closest = await restarted.closest_peers(key)
            after = _find_node_served(servers)
            assert [b - a for a, b in zip(before, after, strict=True)] == [1] * SERVERS  # each asked once
            target = Key.hash(key).value
            assert [p.peer_id for p in closest] == sorted(everyone, key=lambda p: Key.for_peer(p).value ^ target)
            async with restarted.engine.connect() as conn:
                rows = (await conn.execute(select(func.count()).select_from(NetworkPeerRow))).scalar_one()
            assert rows == SERVERS
            assert restarted.status()["crawler"]["peers"] == SERVERS


async def test_two_heads_of_one_postgresql_store_share_the_crawl(make_store, loopback_options, pg_store_url):  # noqa: F811
    async with AsyncExitStack() as stack:
        servers: list[Node] = []
        for i in range(SERVERS):
            boot = [servers[-1].addresses()[0]] if servers else []
            servers.append(await stack.enter_async_context(Node.start(loopback_options(make_store(), boot))))
        everyone = {s.peer_id for s in servers}
        heads: list[Node] = []
        for _ in range(2):
            options = dataclasses.replace(
                loopback_options(pg_store_url, [servers[-1].addresses()[0]]), routing_table="full", crawl_lease=8
            )
            heads.append(await stack.enter_async_context(Node.start(options)))

        def held(node: Node) -> frozenset[int]:
            assert node.crawler is not None and node.crawler.shards is not None
            return node.crawler.shards.shards

        # Fair shares (8 and 8 of 16), disjoint; each table ends up with every server,
        # crawled by one head or the other and read in by both.
        await wait_until(lambda: sorted(len(held(h)) for h in heads) == [8, 8], timeout=60)
        assert not held(heads[0]) & held(heads[1])
        await wait_until(lambda: all(everyone <= {p.peer_id for p in h.table.peers()} for h in heads), timeout=90)
        crawled: set[PeerId] = set()
        with anyio.fail_after(90):  # every server crawled once, by one head or the other (flushed every 10 s)
            while not everyone <= crawled:
                await anyio.sleep(0.5)
                async with heads[0].engine.connect() as conn:  # type: ignore[union-attr]
                    query = select(NetworkPeerRow.peer_id).where(NetworkPeerRow.crawled_at.is_not(None))
                    crawled = {PeerId(bytes(p)) for p in (await conn.execute(query)).scalars()}
        await wait_until(lambda: all(h.status()["crawler"]["shards"] == sorted(held(h)) for h in heads))
        scrape = generate_latest(heads[0].metrics.registry).decode()
        assert f'dhtstore_crawler_shards{{identity="default",of="16",peer_id="{heads[0].peer_id}"}} 8.0' in scrape, scrape
