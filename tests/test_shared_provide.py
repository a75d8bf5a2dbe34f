"""Issue 7: three node identities on one PostgreSQL store share one provide list. They
split it by claiming slices of the keyspace: each key goes out once per cycle, from one
of them, and when one stops mid-cycle the others finish its share."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from functools import partial

import anyio
import anyio.abc
import pytest
from sqlalchemy import delete, insert, select, update

from dhtstore import multihash
from dhtstore import node as node_module
from dhtstore.data.models import ReprovideClaimRow
from dhtstore.node import Node, NodeOptions
from dhtstore.peerid import PeerId
from dhtstore.provider.api import SweepConfig
from dhtstore.provider.keyspace import Prefix
from dhtstore.provider.reprovider import Reprovider
from dhtstore.provider.sweep import Sweep

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SERVERS = 6
# Nine servers are one region; slices of 400 keys let three processes share it.
CLAIM_BATCH = 400


Options = Callable[..., NodeOptions]  # conftest's loopback_options


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "SweepConfig", partial(SweepConfig, claim_batch=CLAIM_BATCH))


def reprovider(head: Node) -> Reprovider:
    assert head.reprovider is not None
    return head.reprovider


def sweep(head: Node) -> Sweep:
    r = reprovider(head)
    assert r.sweep is not None
    return r.sweep


def cid_mh(i: int) -> bytes:
    return multihash.Multihash(multihash.SHA2_256, hashlib.sha256(b"shared %d" % i).digest()).to_bytes()


async def start_network(stack: AsyncExitStack, loopback_options: Options) -> list[Node]:
    first = await stack.enter_async_context(Node.start(loopback_options()))
    servers = [first]
    for _ in range(SERVERS - 1):
        servers.append(await stack.enter_async_context(Node.start(loopback_options(None, first.addresses()))))
    return servers


async def start_head(stack: AsyncExitStack, options: NodeOptions) -> Node:
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
        while (await reprovider(head).status()).provided_within_interval < count:
            await anyio.sleep(0.2)


async def test_three_processes_share_the_list_each_key_once(pg_store_url: str, loopback_options: Options) -> None:
    keys = [cid_mh(i) for i in range(3000)]
    async with AsyncExitStack() as stack:
        servers = await start_network(stack, loopback_options)
        heads = [
            await start_head(stack, loopback_options(pg_store_url, servers[0].addresses(), reprovide=True)) for _ in range(3)
        ]
        await heads[1].start_provide([multihash.cid_string(k) for k in keys])  # any head may add: the list is the store's
        await wait_all_provided(heads[0], len(keys))
        shares = [sweep(h).counters.keys_provided for h in heads]
        assert sum(shares) == len(keys), f"each key marked provided once, shares {shares}"
        assert sum(1 for n in shares if n) >= 2, f"the work was shared, shares {shares}"
        seen = await providers_seen(servers, keys, {h.peer_id for h in heads})
        assert all(len(s) == 1 for s in seen.values()), "each key provided by one head"
        for head in heads:
            assert sum(1 for s in seen.values() if s == {head.peer_id}) == sweep(head).counters.keys_provided


async def run_head(options: NodeOptions, stop: anyio.Event, *, task_status: anyio.abc.TaskStatus[Node]) -> None:
    """A head in its own task, so any one can be stopped while the others run."""
    async with Node.start(options) as head:
        await head.upkeep.bootstrapped.wait()
        task_status.started(head)
        await stop.wait()


async def test_the_others_finish_the_share_of_a_process_stopped_mid_cycle(pg_store_url: str, loopback_options: Options) -> None:
    keys = [cid_mh(i) for i in range(3000)]
    async with AsyncExitStack() as stack:
        servers = await start_network(stack, loopback_options)
        async with anyio.create_task_group() as tg:
            stops = [anyio.Event() for _ in range(3)]
            heads = [
                await tg.start(run_head, loopback_options(pg_store_url, servers[0].addresses(), reprovide=True), stop)
                for stop in stops
            ]
            await heads[0].start_provide([multihash.cid_string(k) for k in keys])
            with anyio.fail_after(60):  # mid-cycle: its sweep has begun sending
                while not reprovider(heads[0]).sweep or not sweep(heads[0]).counters.messages:
                    await anyio.sleep(0.005)
            stops[0].set()  # it goes away between two keys; its slice is released
            survivors = heads[1:]
            with anyio.fail_after(30):
                while (engine := heads[0].engine) is not None and engine.pool.checkedout():
                    await anyio.sleep(0.05)
            assert (await reprovider(survivors[0]).status()).provided_within_interval < len(keys), "stopped mid-cycle"
            await wait_all_provided(survivors[0], len(keys))
            assert all(sweep(h).counters.keys_provided for h in survivors), "both others took a share"
            # Records are held by the servers and by the heads (in the shared store).
            seen = await providers_seen([*servers, survivors[0]], keys, {h.peer_id for h in heads})
            for stop in stops:
                stop.set()
        assert all(seen.values()), "no key left unprovided"


async def test_a_process_whose_claim_is_taken_over_stops_and_marks_nothing(
    pg_store_url: str, loopback_options: Options, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its store connection hung past the lease, say: another process owns the slice now."""
    monkeypatch.setattr(node_module, "SweepConfig", partial(SweepConfig, claim_batch=10_000))
    keys = [cid_mh(i) for i in range(3000)]
    async with AsyncExitStack() as stack:
        servers = await start_network(stack, loopback_options)
        options = replace(loopback_options(pg_store_url, servers[0].addresses(), reprovide=True), claim_lease=3)
        head = await start_head(stack, options)
        await head.start_provide([multihash.cid_string(k) for k in keys])
        visits = await reprovider(head).open()
        with anyio.fail_after(60):  # mid-visit: sending under its claim on every key
            while not visits.counters.messages:
                await anyio.sleep(0.005)
        assert head.engine is not None
        async with head.engine.begin() as conn:
            stolen = await conn.execute(
                update(ReprovideClaimRow).values(owner="another process", expires_at=ReprovideClaimRow.expires_at + 3600)
            )
            assert stolen.rowcount == 1
            # The other process takes the rest of the keyspace too: with few servers the
            # region may be "0*" alone, and this one would go on to "1*".
            whole = Prefix.parse("*")
            held = (await conn.execute(select(ReprovideClaimRow.region))).scalar_one()
            if held != str(whole):
                until = (await conn.execute(select(ReprovideClaimRow.expires_at))).scalar_one()
                await conn.execute(
                    insert(ReprovideClaimRow).values(
                        region=str(whole), first_key=whole.first_bytes(), last_key=whole.last_bytes(),
                        owner="another process", claimed_at=until - 3600, expires_at=until,
                    )
                )  # fmt: skip
        with anyio.fail_after(30):  # its next renewal (every lease/3) finds the claim gone
            while not visits._claim_lost:
                await anyio.sleep(0.05)
        sent = visits.counters.messages
        await anyio.sleep(1.5)
        assert visits.counters.messages == sent < len(keys) * SERVERS, "it stopped sending"
        status = await reprovider(head).status()
        assert status.provided_within_interval == 0 and visits.counters.keys_failed == 0, "and marked nothing"
        assert head.engine is not None
        async with head.engine.begin() as conn:
            await conn.execute(delete(ReprovideClaimRow))  # the other process is done (it released)
        await wait_all_provided(head, len(keys))
        assert visits.counters.keys_provided == len(keys)
