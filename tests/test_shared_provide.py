"""Issue 7: three node identities on one PostgreSQL store share one provide list; exactly
one of them (the holder of the reprovide lock) provides it, and a standby takes over
when that one dies mid-cycle."""

from __future__ import annotations

import hashlib
from contextlib import AsyncExitStack

import anyio
import pytest

from dhtstore import multihash, node as node_module
from dhtstore.node import Node
from dhtstore.peerid import PeerId

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SERVERS = 6


def cid_mh(i: int) -> bytes:
    return multihash.Multihash(multihash.SHA2_256, hashlib.sha256(b"shared %d" % i).digest()).to_bytes()


async def start_network(stack: AsyncExitStack, loopback_options) -> list[Node]:
    first = await stack.enter_async_context(Node.start(loopback_options()))
    servers = [first]
    for _ in range(SERVERS - 1):
        servers.append(await stack.enter_async_context(Node.start(loopback_options(None, first.addresses()))))
    return servers


async def start_head(stack: AsyncExitStack, options) -> Node:
    head = await stack.enter_async_context(Node.start(options))
    await head.upkeep.bootstrapped.wait()
    return head


async def providers_seen(servers: list[Node], keys: list[bytes], heads: set[PeerId]) -> dict[bytes, set[PeerId]]:
    """For each key, which heads the servers hold a provider record of."""
    seen: dict[bytes, set[PeerId]] = {k: set() for k in keys}
    for server in servers:
        for key in keys:
            for record in await server.providers.get_providers(key):
                if record.provider.peer_id in heads:
                    seen[key].add(record.provider.peer_id)
    return seen


async def wait_all_provided(head: Node, count: int, timeout: float = 90) -> None:
    with anyio.fail_after(timeout):
        while (await head.reprovider.status()).provided_within_interval < count:
            await anyio.sleep(0.2)


async def test_one_process_provides_the_shared_list_exactly_once(pg_store_url, monkeypatch, loopback_options):
    monkeypatch.setattr(node_module, "LEADER_RETRY", 0.3)
    keys = [cid_mh(i) for i in range(300)]
    async with AsyncExitStack() as stack:
        servers = await start_network(stack, loopback_options)
        heads = [
            await start_head(stack, loopback_options(pg_store_url, servers[0].addresses(), reprovide=True)) for _ in range(3)
        ]
        await heads[1].start_provide([multihash.cid_string(k) for k in keys])  # any head may add: the list is the store's
        await wait_all_provided(heads[0], len(keys))
        assert sum(h.reprovide_active for h in heads) == 1
        [leader] = [h for h in heads if h.reprovide_active]
        assert {h.status()["reprovider"] for h in heads if h is not leader} == {"standby"}
        seen = await providers_seen(servers, keys, {h.peer_id for h in heads})
        assert all(s == {leader.peer_id} for s in seen.values()), "each key provided by the leader alone"


async def run_head(options, stop: anyio.Event, *, task_status) -> None:
    """A head in its own task, so any one can be stopped while the others run."""
    async with Node.start(options) as head:
        await head.upkeep.bootstrapped.wait()
        task_status.started(head)
        await stop.wait()


async def test_a_standby_takes_over_when_the_leader_dies_mid_cycle(pg_store_url, monkeypatch, loopback_options):
    monkeypatch.setattr(node_module, "LEADER_RETRY", 0.3)
    keys = [cid_mh(i) for i in range(1500)]
    async with AsyncExitStack() as stack:
        servers = await start_network(stack, loopback_options)
        async with anyio.create_task_group() as tg:
            stops = [anyio.Event() for _ in range(3)]
            heads = [
                await tg.start(run_head, loopback_options(pg_store_url, servers[0].addresses(), reprovide=True), stop)
                for stop in stops
            ]
            await heads[0].start_provide([multihash.cid_string(k) for k in keys])
            with anyio.fail_after(60):
                while not any(h.reprovide_active for h in heads):
                    await anyio.sleep(0.05)
            leader = next(i for i, h in enumerate(heads) if h.reprovide_active)
            with anyio.fail_after(60):  # mid-cycle: its sweep has begun sending
                while not (heads[leader].reprovider.sweep and heads[leader].reprovider.sweep.counters.messages):
                    await anyio.sleep(0.005)
            stops[leader].set()  # the leader goes away; its lock goes with its connection
            survivors = [h for i, h in enumerate(heads) if i != leader]
            with anyio.fail_after(30):
                while heads[leader].engine.pool.checkedout() or not any(h.reprovide_active for h in survivors):
                    await anyio.sleep(0.05)
            assert (await survivors[0].reprovider.status()).provided_within_interval < len(keys), "stopped mid-cycle"
            await wait_all_provided(survivors[0], len(keys))
            [new_leader] = [h for h in survivors if h.reprovide_active]
            assert new_leader.reprovider.sweep.counters.keys_provided > 0, "the standby took over"
            # Records are held by the servers and by the heads (in the shared store).
            seen = await providers_seen([*servers, survivors[0]], keys, {h.peer_id for h in heads})
            for stop in stops:
                stop.set()
        assert all(seen.values()), "no key left unprovided"
