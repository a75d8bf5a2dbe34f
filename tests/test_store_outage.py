"""A database that goes away: every store raises StoreUnavailable (never a driver's or
SQLAlchemy's error), and the request handler answers GET_VALUE / GET_PROVIDERS with
closer peers and refuses PUT_VALUE, all counted, instead of letting the error escape.

Two real outages: a SQLite store whose file is deleted (a fresh connection finds no
tables), and a PostgreSQL store that terminates its sessions and refuses connections.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from test_shared_store import outage as pg_outage

from dhtstore import amino
from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.data.schema import open_store
from dhtstore.errors import StoreUnavailable
from dhtstore.kadkey import Key
from dhtstore.network.identify import IdentifyInfo
from dhtstore.peerbook import PeerBook
from dhtstore.providerstore.api import ProviderStore
from dhtstore.providerstore.sql import SqlProviderStore
from dhtstore.records import ipns
from dhtstore.records.api import ValueStore
from dhtstore.records.sql import SqlValueStore
from dhtstore.records.validators import NamespacedValidator
from dhtstore.routingtable.kbuckets import KBucketTable
from dhtstore.server.api import InvalidRequest
from dhtstore.server.handler import KademliaHandler
from dhtstore.types import Message, MessageType, PeerInfo, Record

pytestmark = pytest.mark.anyio

MH = b"\x12\x20" + bytes(range(32))
ADDR = bytes([0x04, 10, 1, 2, 3, 0x06, 0x0F, 0xA1])
rng = random.Random(7)

Outage = Callable[[], AbstractAsyncContextManager[None]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[AsyncEngine, Outage]]:
    """An engine on a migrated store, and an ``outage()`` that takes its database away."""
    url: str = request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_store_url")
    engine = await open_store(url)

    @asynccontextmanager
    async def sqlite_outage() -> AsyncIterator[None]:
        path = Path(make_url(url).database or "")
        await engine.dispose()  # open connections would still see the deleted file
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)
        yield

    try:
        yield engine, (sqlite_outage if request.param == "sqlite" else lambda: pg_outage(url))
    finally:
        await engine.dispose()


def new_peer() -> PeerInfo:
    return PeerInfo(PrivateKey.generate(KeyType.Ed25519).peer_id(), (ADDR,))


async def test_get_value_during_an_outage_is_answered_with_closer_peers(store: tuple[AsyncEngine, Outage]) -> None:
    engine, outage = store
    validator = NamespacedValidator()
    values: ValueStore = SqlValueStore(engine, validator)
    key = PrivateKey.generate(KeyType.Ed25519)
    eol = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    record = Record(ipns.routing_key(key.peer_id()), ipns.create(key, b"/ipfs/a", 1, eol))
    await values.put(record)
    me = new_peer()
    table = KBucketTable(Key.for_peer(me.peer_id))
    known = [new_peer() for _ in range(30)]
    for p in known:
        table.add(p, 0.0)
    async with SqlProviderStore(engine) as providers:
        store_: ProviderStore = providers
        handler = KademliaHandler(me, table, store_, values, validator)
        sender = known[0]
        got = await handler.handle(sender, Message(MessageType.GET_VALUE, key=record.key))
        assert got is not None and got.record is not None and got.record.value == record.value
        with anyio.fail_after(10):  # the key filter answers misses once built: build it first
            while providers.counters["key_filter_builds"] == 0:
                await anyio.sleep(0.01)

        async with outage():
            with pytest.raises(StoreUnavailable):
                await values.get(record.key)
            reply = await handler.handle(sender, Message(MessageType.GET_VALUE, key=record.key))
            assert reply is not None and reply.record is None
            assert len(reply.closer_peers) == amino.BUCKET_SIZE and sender not in reply.closer_peers
            with pytest.raises(InvalidRequest):
                await handler.handle(sender, Message(MessageType.PUT_VALUE, key=record.key, record=record))
            with pytest.raises(InvalidRequest):
                await handler.handle(sender, Message(MessageType.ADD_PROVIDER, key=MH, provider_peers=(sender,)))
            # The key filter (built above) took MH before the failed write's transaction,
            # so this GET_PROVIDERS cannot be answered as a miss: it asks the store.
            reply = await handler.handle(sender, Message(MessageType.GET_PROVIDERS, key=MH))
            assert reply is not None and reply.provider_peers == () and reply.closer_peers
        assert handler.counters[("GET_VALUE", "store_unavailable")] == 1
        assert handler.counters[("PUT_VALUE", "store_unavailable")] == 1
        assert handler.counters[("GET_PROVIDERS", "store_unavailable")] == 1
        assert handler.counters[("ADD_PROVIDER", "store_unavailable")] == 1


async def test_every_store_call_raises_store_unavailable(store: tuple[AsyncEngine, Outage]) -> None:
    engine, outage = store
    values = SqlValueStore(engine, NamespacedValidator())
    book = PeerBook(engine)
    async with SqlProviderStore(engine, retry_delays=()) as providers:
        async with outage():
            for call in (
                lambda: values.get(b"/pk/x"),
                lambda: values.put(Record(b"/pk/x", b"v")),
                values.count,
                values.sweep,
                lambda: providers.add_provider(MH, new_peer().peer_id, (ADDR,)),
                lambda: providers.get_providers(MH),
                providers.sweep_expired,
                providers.stats,
                book.prune,
            ):
                with pytest.raises(StoreUnavailable):
                    await call()
            book.on_identify(new_peer().peer_id, IdentifyInfo(listen_addrs=(ADDR,)))
            with pytest.raises(StoreUnavailable):
                await book.flush()
            assert not providers.available
