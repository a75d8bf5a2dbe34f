"""The provider store's key filter: a miss is answered without a query, and no key
with a record is ever missed (before start, just written, after a restart, after a
rebuild, on a false positive); a shared store keeps no filter."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.providerstore import keyfilter
from dhtstore.data.bloom import BloomFilter
from dhtstore.providerstore.sql import SqlProviderStore

pytestmark = pytest.mark.anyio

PEERS = [PrivateKey.generate().peer_id() for _ in range(4)]


def mh(i: int) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(b"%d" % i).digest()).to_bytes()


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements the engine runs inside the block."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def built(store: SqlProviderStore, builds: int = 1) -> None:
    with anyio.fail_after(10):
        while store.counters["key_filter_builds"] < builds:
            await anyio.sleep(0.01)


async def test_a_miss_runs_no_query_and_a_hit_is_found_as_soon_as_its_add_returns(sqlite_store_url: str) -> None:
    engine = make_engine(sqlite_store_url)
    try:
        async with SqlProviderStore(engine) as store:
            await built(store)
            with statements(engine) as seen:
                assert await store.get_providers(mh(1)) == []
            assert seen == [] and store.counters["filtered_misses"] == 1
            await store.add_provider(mh(1), PEERS[0])
            assert [r.provider.peer_id for r in await store.get_providers(mh(1))] == [PEERS[0]]
    finally:
        await engine.dispose()


async def test_records_from_before_start_are_found_and_a_restart_keeps_them(sqlite_store_url: str) -> None:
    engine = make_engine(sqlite_store_url)
    try:
        async with SqlProviderStore(engine) as store:
            for i in range(50):
                await store.add_provider(mh(i), PEERS[i % 4])
        for _ in range(2):  # the filter of each new store is built from the store
            async with SqlProviderStore(engine, cache_size=1) as store:
                assert len(await store.get_providers(mh(7))) == 1  # before the build: a query
                await built(store)
                for i in range(50):
                    assert [r.provider.peer_id for r in await store.get_providers(mh(i))] == [PEERS[i % 4]]
                assert await store.get_providers(mh(1000)) == []
                await store.add_provider(mh(50), PEERS[0])
        async with SqlProviderStore(engine) as store:
            await built(store)
            assert len(await store.get_providers(mh(50))) == 1
    finally:
        await engine.dispose()


async def test_a_rebuild_when_full_loses_no_key_written_during_it(
    sqlite_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyfilter, "MIN_CAPACITY", 16)  # so the filter fills, and is rebuilt
    monkeypatch.setattr(keyfilter, "SCAN_BATCH", 7)  # in pages, with writes between them
    engine = make_engine(sqlite_store_url)
    try:
        async with SqlProviderStore(engine, cache_size=1) as store:
            await built(store)
            for wave in range(30):  # batches of 10 committed while the rebuilds scan
                async with anyio.create_task_group() as writers:
                    for i in range(wave * 10, wave * 10 + 10):
                        writers.start_soon(store.add_provider, mh(i), PEERS[i % 4])
            await built(store, 2)
            for i in range(300):
                assert len(await store.get_providers(mh(i))) == 1, i
        async with SqlProviderStore(engine) as store:
            await built(store)
            assert store._key_filter is not None and store._key_filter.nbytes > 300
    finally:
        await engine.dispose()


async def test_a_false_positive_is_answered_by_the_store(sqlite_store_url: str) -> None:
    engine = make_engine(sqlite_store_url)
    try:
        async with SqlProviderStore(engine) as store:
            await built(store)
            await store.add_provider(mh(1), PEERS[0])
            assert store._key_filter is not None
            current = store._key_filter._current
            assert current is not None
            absent = mh(2)
            current.add(absent)  # now a false positive for sure
            with statements(engine) as seen:
                assert await store.get_providers(absent) == []
            assert len(seen) == 1
    finally:
        await engine.dispose()


async def test_a_shared_store_keeps_no_filter_and_sees_other_writers(sqlite_store_url: str) -> None:
    engine = make_engine(sqlite_store_url)
    try:
        async with SqlProviderStore(engine, shared=True) as reader, SqlProviderStore(engine) as writer:
            assert await reader.get_providers(mh(1)) == []
            await writer.add_provider(mh(1), PEERS[0])
            assert len(await reader.get_providers(mh(1))) == 1
            assert reader.counters["key_filter_builds"] == 0 and reader.counters["filtered_misses"] == 0
    finally:
        await engine.dispose()


def test_bloom_filter_has_no_false_negatives_and_few_false_positives() -> None:
    f = BloomFilter(10_000)
    keys = [mh(i) for i in range(10_000)]
    for k in keys:
        f.add(k)
    assert all(k in f for k in keys)
    false = sum(mh(i) in f for i in range(10_000, 30_000))
    assert false < 20_000 * 0.005  # designed for 0.1 %
    assert f.nbytes < 10_000 * 2  # 14.4 bits a key
