"""``routing_table="full"`` on real nodes over loopback TCP: the crawler finds every
server from one bootstrap peer, the table is in the store, and a restarted node routes
from it at once, asking each candidate once."""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack

import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, select

from dhtstore.data.models import NetworkPeerRow
from dhtstore.kadkey import Key
from dhtstore.node import Node

from test_node import make_store, wait_until  # noqa: F401  (make_store is a fixture)

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
