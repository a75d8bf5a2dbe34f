"""The provide list's in-memory filter (``provider.listfilter``) behind GET_PROVIDERS'
own-list check on SQLite: a key we do not provide is answered with no statement at
all, a key another process or connection adds is answered as provided within 1 s (also
when ids at the top of the table were deleted first: revision 0005 keeps them from
being reused), and revision 0005 upgrades a store filled at 0004 keeping every row.
On PostgreSQL the filter hears of other processes' keys from the key feed (revision
0008), also those whose ids commit out of order; the lookups of one tick that do ask
(without the filter) share a statement."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement

from dhtstore.data.engine import make_engine, sqlite_path
from dhtstore.data.fastread import Reader, open_reader
from dhtstore.data.keyfeed import PROVIDED_KEYS, PostgresKeyFeed
from dhtstore.data.schema import downgrade, open_store, upgrade
from dhtstore.multihash import cid_string
from dhtstore.provider.listfilter import ProvideListFilter
from dhtstore.provider.providelist import ProvideListStore

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000
SEEN_WITHIN = 1.0  # seconds: the shared-store promise (a record another process wrote is served within 1 s)
REVISION = "0005"  # provide_list_changes
PREVIOUS = "0004"


def mh(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"own%d" % i).digest()


class CountingReader:
    """A ``Reader`` that counts the statements it runs."""

    def __init__(self, reader: Reader):
        self._reader = reader
        self.statements = 0

    async def fetch(self, statement: ClauseElement, **params: Any) -> list[tuple[Any, ...]]:
        self.statements += 1
        return await self._reader.fetch(statement, **params)


def count_engine_statements(engine: AsyncEngine) -> list[str]:
    seen: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda _c, _cur, sql, *_: seen.append(sql))
    return seen


@asynccontextmanager
async def following(store_url: str) -> AsyncIterator[tuple[ProvideListStore, ProvideListFilter, CountingReader, AsyncEngine]]:
    """A node's view of the list: the filter built and following the table (on
    PostgreSQL, through the key feed)."""
    engine = await open_store(store_url)
    try:
        async with open_reader(engine) as plain:
            assert plain is not None
            reader = CountingReader(plain)
            feed = PostgresKeyFeed(engine.url, PROVIDED_KEYS) if store_url.startswith("postgresql") else None
            list_filter = ProvideListFilter(engine, reader, feed)
            async with anyio.create_task_group() as tg:
                tg.start_soon(list_filter.run)
                with anyio.fail_after(10):
                    while not list_filter.ready:
                        await anyio.sleep(0.01)
                yield ProvideListStore(engine, reader, list_filter), list_filter, reader, engine
                tg.cancel_scope.cancel()
    finally:
        await engine.dispose()


async def answered_as_provided(store: ProvideListStore, key: bytes) -> None:
    with anyio.fail_after(SEEN_WITHIN):
        while not await store.contains(key):
            await anyio.sleep(0.02)


async def test_a_key_we_do_not_provide_runs_no_statement(sqlite_store_url: str) -> None:
    engine = await open_store(sqlite_store_url)
    try:
        await ProvideListStore(engine).add([(f"c{i}", mh(i)) for i in range(100)], NOW)
        async with open_reader(engine) as plain:
            assert plain is not None
            reader = CountingReader(plain)
            list_filter = ProvideListFilter(engine, reader)
            async with anyio.create_task_group() as tg:
                tg.start_soon(list_filter.run)
                with anyio.fail_after(10):
                    while not list_filter.ready:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()  # no refresh from here on: every statement below is a lookup's
            store = ProvideListStore(engine, reader, list_filter)
            engine_sql = count_engine_statements(engine)
            before = reader.statements
            misses = [await store.contains(mh(i)) for i in range(1_000, 3_000)]
            assert not any(misses)
            assert reader.statements == before and engine_sql == [], "a miss ran a statement"
            assert all([await store.contains(mh(i)) for i in range(100)]), "a listed key asks SQL and is found"
            assert reader.statements == before + 100 and engine_sql == []
    finally:
        await engine.dispose()


async def test_a_key_another_connection_commits_is_provided_within_1s(sqlite_store_url: str) -> None:
    path = sqlite_path(make_url(sqlite_store_url))
    assert path is not None
    async with following(sqlite_store_url) as (store, _, _, _):
        assert not await store.contains(mh(1))
        other = sqlite3.connect(path)
        try:
            for i in (1, 2, 3):
                other.execute(
                    "INSERT INTO provided_keys (cid, multihash, kad_key, added_at, next_due_at) VALUES (?, ?, x'00', 0, 0)",
                    (f"c{i}", mh(i)),
                )
            other.commit()
            await answered_as_provided(store, mh(1))
            assert await store.contains(mh(3))
            # The top rows deleted, then another key: a plain rowid table would hand it
            # id 2 again, below the last id the filter read.
            other.execute("DELETE FROM provided_keys WHERE multihash IN (?, ?)", (mh(2), mh(3)))
            other.commit()
            await anyio.sleep(0.6)  # the filter has read past id 3 by now (not asserted: it only makes the case real)
            other.execute(
                "INSERT INTO provided_keys (cid, multihash, kad_key, added_at, next_due_at) VALUES ('c4', ?, x'00', 0, 0)",
                (mh(4),),
            )
            other.commit()
            await answered_as_provided(store, mh(4))
            assert not await store.contains(mh(2)), "a removed key is answered by SQL, not the filter"
        finally:
            other.close()


async def test_a_key_dhtstore_provide_add_adds_in_another_process_is_provided_within_1s(store_url: str) -> None:
    async with following(store_url) as (store, _, _, _):
        assert not await store.contains(mh(7))
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "dhtstore", "provide", "add", cid_string(mh(7)), "--store", store_url],
                check=False, capture_output=True, text=True, timeout=120,
            )
        )
        assert done.returncode == 0, done.stderr
        await answered_as_provided(store, mh(7))


async def test_a_filter_that_fills_up_is_rebuilt_larger_and_misses_nothing(
    sqlite_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dhtstore.provider import listfilter

    monkeypatch.setattr(listfilter, "MIN_CAPACITY", 16)
    path = sqlite_path(make_url(sqlite_store_url))
    assert path is not None
    async with following(sqlite_store_url) as (store, list_filter, _, _):
        other = sqlite3.connect(path)
        try:
            other.executemany(
                "INSERT INTO provided_keys (cid, multihash, kad_key, added_at, next_due_at) VALUES (?, ?, x'00', 0, 0)",
                [(f"c{i}", mh(i)) for i in range(100, 300)],
            )
            other.commit()
        finally:
            other.close()
        with anyio.fail_after(10):
            while list_filter.builds < 2 or not list_filter.ready:
                await anyio.sleep(0.05)
        assert all([await store.contains(mh(i)) for i in range(100, 300)])
        assert not any([await store.contains(mh(i)) for i in range(1_000, 1_050)])


async def test_this_process_add_is_provided_at_once(sqlite_store_url: str) -> None:
    async with following(sqlite_store_url) as (store, _, _, _):
        await store.add([("c9", mh(9))], NOW)
        assert await store.contains(mh(9))


async def test_a_failed_read_makes_every_key_ask_sql_until_the_filter_is_back(sqlite_store_url: str) -> None:
    async with following(sqlite_store_url) as (_, list_filter, _, engine):
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE provided_keys RENAME TO provided_keys_away"))
        with anyio.fail_after(5):
            while list_filter.ready:
                await anyio.sleep(0.02)
        assert list_filter.may_contain(mh(1)), "not followed: maybe, never a false no"
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE provided_keys_away RENAME TO provided_keys"))
        with anyio.fail_after(10):
            while not list_filter.ready:
                await anyio.sleep(0.05)


async def test_postgresql_lookups_of_one_tick_share_one_statement(pg_store_url: str) -> None:
    """Without the filter (before it is built, or its feed is lost), the lookups that
    arrive together are one ``= ANY`` statement, each with its own answer."""
    engine = await open_store(pg_store_url)
    try:
        await ProvideListStore(engine).add([(f"c{i}", mh(i)) for i in range(0, 50, 2)], NOW)  # the even ones
        async with open_reader(engine) as plain:
            assert plain is not None
            reader = CountingReader(plain)
            store = ProvideListStore(engine, reader)
            answers: dict[int, bool] = {}

            async def ask(i: int) -> None:
                answers[i] = await store.contains(mh(i))

            async with anyio.create_task_group() as tg:
                for i in range(50):
                    tg.start_soon(ask, i)
            assert answers == {i: i % 2 == 0 for i in range(50)}
            assert reader.statements == 1
            assert await store.contains(mh(2)) and not await store.contains(mh(3))
            assert reader.statements == 3
    finally:
        await engine.dispose()


async def test_postgresql_misses_run_no_statement_and_keys_committed_out_of_id_order_are_seen(pg_store_url: str) -> None:
    async with following(pg_store_url) as (store, _, reader, engine):
        before = reader.statements
        assert not any([await store.contains(mh(i)) for i in range(1_000, 1_500)])
        assert reader.statements == before, "a miss ran a statement"
        # Two transactions: the one holding the smaller id commits last. Read by id, the
        # list would be past that id by then; the feed hears of the commit itself.
        async with engine.connect() as first, engine.connect() as second:
            insert = text(
                "INSERT INTO provided_keys (cid, multihash, kad_key, added_at, next_due_at) VALUES (:cid, :mh, '\\x00', 0, 0)"
            )
            await first.execute(insert, {"cid": "c1", "mh": mh(1)})
            await second.execute(insert, {"cid": "c2", "mh": mh(2)})
            await second.commit()
            await answered_as_provided(store, mh(2))
            await anyio.sleep(0.3)
            await first.commit()
        await answered_as_provided(store, mh(1))


async def test_revision_0005_keeps_every_row_and_stops_id_reuse(empty_url: str) -> None:
    engine = make_engine(empty_url)
    insert = text(
        "INSERT INTO provided_keys (cid, multihash, kad_key, added_at, next_due_at, last_provided_at, attempts, last_error)"
        " VALUES (:c, :m, :k, 5, 6, 7, 2, 'e')"
    )
    rows = text("SELECT id, cid, multihash, kad_key, added_at, next_due_at, last_provided_at, attempts, last_error FROM provided_keys ORDER BY id")
    try:
        await upgrade(engine, PREVIOUS)
        async with engine.begin() as conn:  # a store filled at the previous revision
            for i in range(5):
                await conn.execute(insert, {"c": f"c{i}", "m": mh(i), "k": bytes([i])})
        async with engine.connect() as conn:
            filled = (await conn.execute(rows)).all()
        await upgrade(engine, REVISION)
        async with engine.begin() as conn:
            assert (await conn.execute(rows)).all() == filled
            top = filled[-1][0]
            await conn.execute(text("DELETE FROM provided_keys WHERE id = :i"), {"i": top})
            await conn.execute(insert, {"c": "new", "m": mh(99), "k": b"\x99"})
            new_id = (await conn.execute(text("SELECT id FROM provided_keys WHERE cid = 'new'"))).scalar_one()
        assert new_id > top, "an id is never handed out again"
        await downgrade(engine, PREVIOUS)
        async with engine.connect() as conn:
            assert (await conn.execute(rows)).all() == [*filled[:-1], (new_id, "new", mh(99), b"\x99", 5, 6, 7, 2, "e")]
        await upgrade(engine, REVISION)
    finally:
        await downgrade(engine, "base")  # leave the session's PG database empty for the next test
        await engine.dispose()
