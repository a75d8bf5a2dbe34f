"""Real dhtstore nodes over loopback TCP, each with its own SQLite store."""

from __future__ import annotations

import shutil
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from dhtstore import multihash
from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import default_store_url
from dhtstore.data.models import PeerRow, RoutingSnapshotPeerRow
from dhtstore.data.schema import open_store
from dhtstore.errors import NetworkError
from dhtstore.network import multiaddrs
from dhtstore.node import Node
from dhtstore.provider.providelist import ProvideListStore
from dhtstore.providerstore.quotas import QuotaCounts
from dhtstore.records import pk
from dhtstore.routing.api import NotFound
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = pytest.mark.anyio

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


@pytest.fixture
def make_store(_sqlite_template: Path, tmp_path: Path):
    counter = iter(range(1000))

    def make() -> str:
        directory = tmp_path / f"store{next(counter)}"
        directory.mkdir()
        shutil.copyfile(_sqlite_template, directory / "dhtstore.db")
        return default_store_url(directory)

    return make


async def wait_until(predicate, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


async def test_three_nodes_route_provide_and_store_values(make_store, loopback_options):
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node.start(loopback_options(make_store())))
        b = await stack.enter_async_context(Node.start(loopback_options(make_store(), [a.addresses()[0]])))
        c = await stack.enter_async_context(Node.start(loopback_options(make_store(), [a.addresses()[0]])))
        client = await stack.enter_async_context(Node.start(loopback_options(None, [a.addresses()[0]], mode="client")))

        await wait_until(lambda: b.peer_id in a.table and c.peer_id in a.table)
        await b.closest_peers(b.peer_id.to_bytes())  # learns c through a
        await wait_until(lambda: c.peer_id in b.table)
        # A client-mode node neither serves nor advertises kad, so no one admits it.
        assert client.peer_id not in a.table and client.peer_id not in b.table
        assert "/ipfs/kad/1.0.0" not in client.host.protocols
        assert "/ipfs/kad/1.0.0" in a.host.protocols

        assert await c.provide_once(CID) >= 1
        mh = multihash.from_cid(CID)
        # ADD_PROVIDER gets no reply (as in go): wait until the servers have stored it.
        with anyio.fail_after(10):
            while not await a.providers.get_providers(mh) or not await b.providers.get_providers(mh):
                await anyio.sleep(0.05)
        assert [r.provider.peer_id for r in await a.providers.get_providers(mh)] == [c.peer_id]
        found = await client.find_providers(CID)
        assert [p.peer_id for p in found] == [c.peer_id]
        assert found[0].addrs, "provider addresses travel with the record"

        located = await client.find_peer(b.peer_id)
        assert located.peer_id == b.peer_id
        assert any(multiaddrs.is_loopback(multiaddrs.parse(x)) for x in located.addrs)

        key = pk.routing_key(b.peer_id)
        value = b.options.identity.public_key().to_protobuf()
        # An Ed25519 peer id inlines its key, but /pk/ records are valid for it all the same.
        assert await b.put_value(key, value) >= 1
        record = await client.get_value(key)
        assert record.value == value
        with pytest.raises(NotFound):
            await client.get_value(pk.routing_key(PrivateKey.generate().peer_id()))

        status = a.status()
        assert status["routing_table"] >= 2
        assert status["requests"].get("find_node_ok", 0) >= 1


async def test_snapshot_is_written_at_shutdown_and_reloaded(make_store, loopback_options):
    identity = PrivateKey.generate()
    store = make_store()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node.start(loopback_options(make_store())))
        async with Node.start(loopback_options(store, [a.addresses()[0]], identity=identity)) as b:
            await wait_until(lambda: a.peer_id in b.table)
            engine = b.engine
        # A fresh start, with no bootstrap peers, finds its way back from the snapshot.
        async with Node.start(loopback_options(store, [], identity=identity)) as b2:
            async with b2.engine.connect() as conn:
                count = (await conn.execute(select(func.count()).select_from(RoutingSnapshotPeerRow))).scalar()
            assert count >= 1
            async with b2.engine.connect() as conn:
                agents = (await conn.execute(select(PeerRow.agent).where(PeerRow.peer_id == a.peer_id.to_bytes()))).all()
            assert agents == [("dhtstore/0.1.0",)], "the peer book was flushed at shutdown"
            await wait_until(lambda: a.peer_id in b2.table)
    assert engine is not None


async def test_the_provide_list_is_provided_and_found(make_store, loopback_options):
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node.start(loopback_options(make_store())))
        b = await stack.enter_async_context(Node.start(loopback_options(make_store(), [a.addresses()[0]])))
        provider_options = loopback_options(make_store(), [a.addresses()[0]], reprovide=True)
        c = await stack.enter_async_context(Node.start(provider_options))
        await wait_until(lambda: c.peer_id in a.table and b.peer_id in a.table)
        cids = [CID, "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"]
        result = await c.start_provide(cids)
        assert result.added == 2
        with anyio.fail_after(20):
            while {e.state.value for e in [e async for e in c.provide_list()]} != {"provided"}:
                await anyio.sleep(0.1)
        for cid in cids:
            with anyio.fail_after(10):
                while not await b.find_providers(cid):
                    await anyio.sleep(0.1)
            assert [p.peer_id for p in await b.find_providers(cid)] == [c.peer_id]
        assert await c.stop_provide([CID]) == 1
        assert [e.cid async for e in c.provide_list()] == [cids[1]]


async def test_a_node_answers_for_keys_another_process_lists(make_store, loopback_options):
    """The own-provide-list check (on SQLite a filter following the table,
    ``provider.listfilter``) sees what ``dhtstore provide add`` commits beside the
    running node within 1 s, before any reprovide has run."""
    url = make_store()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node.start(loopback_options(url, reprovide=True)))
        client = await stack.enter_async_context(Node.start(loopback_options(None, [a.addresses()[0]], mode="client")))
        mh = multihash.from_cid(CID)
        assert not await a.provides(mh)
        engine = await open_store(url)
        try:
            await ProvideListStore(engine).add([(CID, mh)], int(time.time()))
        finally:
            await engine.dispose()
        with anyio.fail_after(1.0):
            while not await a.provides(mh):
                await anyio.sleep(0.02)
        assert [p.peer_id for p in await client.find_providers(CID)] == [a.peer_id]


async def test_a_peer_that_connects_as_soon_as_the_port_opens_is_served_kad(make_store, loopback_options, monkeypatch):
    """The port opens only once the stores are open: a store slow to open (here its quota
    recount, as on a busy shared PostgreSQL) must not leave a window where a connected
    peer is told the kad protocol is not served."""
    real_recount = QuotaCounts.recount

    async def slow_recount(self: QuotaCounts, now: int) -> None:
        await anyio.sleep(0.5)
        await real_recount(self, now)

    monkeypatch.setattr(QuotaCounts, "recount", slow_recount)
    with socket.socket() as probe:  # a free port, known before the node starts
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = loopback_options(make_store(), listen=[f"/ip4/127.0.0.1/tcp/{port}"])
    server = PeerInfo(options.identity.peer_id(), (multiaddrs.parse(f"/ip4/127.0.0.1/tcp/{port}").to_bytes(),))
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(Node.start(loopback_options(None, mode="client")))
        started = anyio.Event()

        async def run_server() -> None:
            async with Node.start(options):
                started.set()
                await anyio.sleep_forever()

        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(run_server)
        refused = 0
        with anyio.fail_after(20):
            while True:
                try:
                    reply = await client.messenger.request(server, Message(MessageType.FIND_NODE, key=b"any key"))
                    break
                except NetworkError as exc:
                    assert "did not accept" not in str(exc), "connected before the kad protocol was served"
                    refused += 1
                    await anyio.sleep(0.01)
        assert reply.type == MessageType.FIND_NODE
        assert refused > 0, "the first attempt came after the node had started: the test proved nothing"
        await started.wait()
        tg.cancel_scope.cancel()  # and a node cancelled from outside stops (its writer closes)
