"""The request-path readers (``data.fastread``: a plain sqlite3 thread, an asyncpg
pool) behind GET_PROVIDERS: they see what other processes commit, answer concurrent
lookups each with its own rows, cannot write (SQLite), and a database failure reaches
the store's callers as ``StoreUnavailable``."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import anyio
import pytest
from sqlalchemy import text

from dhtstore.data.engine import make_engine
from dhtstore.data.fastread import open_reader
from dhtstore.data.schema import open_store
from dhtstore.errors import StoreUnavailable
from dhtstore.provider.providelist import ProvideListStore

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000
COUNT = text("SELECT count(*) FROM provided_keys")


def mh(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"key%d" % i).digest()


async def test_contains_sees_what_another_writer_commits(store_url: str) -> None:
    node_engine, cli_engine = await open_store(store_url), await open_store(store_url)
    try:
        async with open_reader(node_engine) as reader:
            assert reader is not None
            node_list, cli_list = ProvideListStore(node_engine, reader), ProvideListStore(cli_engine)
            assert not await node_list.contains(mh(1))
            await cli_list.add([("cid1", mh(1)), ("cid2", mh(2))], NOW)
            assert await node_list.contains(mh(1)) and await node_list.contains(mh(2))
            await cli_list.remove([mh(1)])
            assert not await node_list.contains(mh(1)) and await node_list.contains(mh(2))
    finally:
        await node_engine.dispose()
        await cli_engine.dispose()


async def test_concurrent_lookups_each_get_their_own_answer(store_url: str) -> None:
    engine = await open_store(store_url)
    try:
        await ProvideListStore(engine).add([(f"cid{i}", mh(i)) for i in range(0, 200, 2)], NOW)  # the even ones
        answers: dict[int, bool] = {}
        async with open_reader(engine) as reader:
            store = ProvideListStore(engine, reader)

            async def ask(i: int) -> None:
                answers[i] = await store.contains(mh(i))

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(ask, i)
        assert answers == {i: i % 2 == 0 for i in range(200)}
    finally:
        await engine.dispose()


async def test_a_cancelled_lookup_leaves_the_others_answered(store_url: str) -> None:
    engine = await open_store(store_url)
    try:
        async with open_reader(engine) as reader:
            assert reader is not None
            results: list[object] = []

            async def ask() -> None:
                results.append(await reader.fetch(COUNT))

            async def give_up() -> None:
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await reader.fetch(COUNT)

            with anyio.fail_after(10):  # a batch left undelivered would hang its callers
                async with anyio.create_task_group() as tg:  # all four lookups in one batch (SQLite)
                    tg.start_soon(give_up)
                    for _ in range(3):
                        tg.start_soon(ask)
            assert results == [[(0,)]] * 3
    finally:
        await engine.dispose()


async def test_the_sqlite_reader_cannot_write(sqlite_store_url: str) -> None:
    engine = await open_store(sqlite_store_url)
    try:
        async with open_reader(engine) as reader:
            assert reader is not None
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                await reader.fetch(text("DELETE FROM provided_keys"))
    finally:
        await engine.dispose()


async def test_a_sqlite_store_that_fails_raises_store_unavailable(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()  # a database never migrated: no tables
    for name, error in (("empty.db", "no such table"), ("missing.db", "unable to open")):
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / name}")
        try:
            async with open_reader(engine) as reader:
                with pytest.raises(StoreUnavailable, match=error):
                    await ProvideListStore(engine, reader).contains(mh(1))
        finally:
            await engine.dispose()
    assert not (tmp_path / "missing.db").exists(), "the reader created the database it reads"


async def test_a_postgresql_server_that_is_down_raises_store_unavailable() -> None:
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    try:
        async with open_reader(engine) as reader:  # opens no connection yet
            with pytest.raises(StoreUnavailable):
                await ProvideListStore(engine, reader).contains(mh(1))
    finally:
        await engine.dispose()


async def test_an_in_memory_sqlite_gets_no_reader() -> None:
    engine = make_engine("sqlite+aiosqlite://")
    try:
        async with open_reader(engine) as reader:
            assert reader is None
    finally:
        await engine.dispose()
