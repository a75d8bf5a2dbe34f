#!/usr/bin/env python3
"""Microbenchmark: the CPU of the two store reads of a GET_PROVIDERS miss, one caller at
a time and 32 concurrent, beside the same indexed lookup with plain ``sqlite3`` in the
same run (the ceiling), on a SQLite store holding ``--records`` records and as many
provide-list entries: ``SqlProviderStore.get_providers`` on a key with no record, and
the node's own-list check ``ProvideListStore.contains`` through SQLAlchemy, through
``data.sqlitereader``, and through the list's filter (``provider.listfilter``) first. CPU is the process's (all threads: aiosqlite's and the reader's).

    python scripts/bench_miss.py                     # 20k records, 5,000 misses per mode
    PYTHONPATH=/tmp/base python scripts/bench_miss.py  # the same against another checkout
    python scripts/bench_miss.py --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Figures are printed, not asserted; BENCHMARKS.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from sqlalchemy.engine import make_url

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import default_store_url, make_engine
from dhtstore.data.schema import create_or_upgrade
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.provider.providelist import ProvideListStore
from dhtstore.providerstore.sql import SqlProviderStore

CONCURRENCY = 32


def key(i: int) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(i.to_bytes(8, "big")).digest()).to_bytes()


async def store_misses(url: str, records: int, lookups: int) -> dict[str, float]:
    engine = make_engine(url)
    peers = [PrivateKey.generate().peer_id() for _ in range(100)]
    try:
        async with SqlProviderStore(engine) as store, anyio.create_task_group() as tg:

            async def writer(w: int) -> None:
                for j in range(w, records, 64):
                    await store.add_provider(key(j), peers[j % 100])

            for w in range(64):
                tg.start_soon(writer, w)
        async with SqlProviderStore(engine) as store:  # a fresh start: the filter (if any) is built from the store
            while store.counters.get("key_filter_builds", 1) < 1:
                await anyio.sleep(0.01)
            return await cpu_per_call(store.get_providers, [key(records + i) for i in range(lookups)])
    finally:
        await engine.dispose()


async def cpu_per_call(lookup: Callable[[bytes], Awaitable[object]], misses: list[bytes]) -> dict[str, float]:
    """CPU µs per ``lookup`` of a missing key: one caller, then CONCURRENCY in flight."""
    t = time.process_time()
    for k in misses:
        assert not await lookup(k)
    one = (time.process_time() - t) / len(misses)

    async def caller(c: int) -> None:
        for k in misses[c::CONCURRENCY]:
            assert not await lookup(k)

    t = time.process_time()
    async with anyio.create_task_group() as tg:
        for c in range(CONCURRENCY):
            tg.start_soon(caller, c)
    many = (time.process_time() - t) / len(misses)
    return {"one_us": one * 1e6, "concurrent_us": many * 1e6}


async def own_list_misses(url: str, records: int, lookups: int) -> dict[str, dict[str, float]]:
    engine = make_engine(url)
    try:
        await ProvideListStore(engine).add([(f"cid{i}", key(i)) for i in range(records)], int(time.time()))
        misses = [key(records + i) for i in range(lookups)]
        result = {"sqlalchemy": await cpu_per_call(ProvideListStore(engine).contains, misses)}
        try:
            from dhtstore.data.fastread import open_reader
        except ImportError:  # a checkout from before the readers
            return result
        async with open_reader(engine) as reader:
            result["reader"] = await cpu_per_call(ProvideListStore(engine, reader).contains, misses)
            try:
                from dhtstore.provider.listfilter import ProvideListFilter
            except ImportError:  # a checkout from before the list's filter
                return result
            list_filter = ProvideListFilter(engine, reader)
            async with anyio.create_task_group() as tg:
                tg.start_soon(list_filter.run)  # its follow-up reads (4 a second) are in the figures
                while not list_filter.ready:
                    await anyio.sleep(0.01)
                result["reader and the list's filter"] = await cpu_per_call(
                    ProvideListStore(engine, reader, list_filter).contains, misses
                )
                tg.cancel_scope.cancel()
        return result
    finally:
        await engine.dispose()


def raw_sqlite3_miss(url: str, stmt: str, params: Callable[[bytes], tuple[object, ...]], misses: list[bytes]) -> float:
    conn = sqlite3.connect(make_url(url).database or "")
    t = time.process_time()
    for k in misses:
        assert conn.execute(stmt, params(k)).fetchall() == []
    cpu = (time.process_time() - t) / len(misses)
    conn.close()
    return cpu * 1e6


def without_key_filter(store: SqlProviderStore) -> SqlProviderStore:
    """The store with its key filter left out (before it starts): every miss a query,
    as a shared PostgreSQL store was before revision 0008's key feed."""
    store._key_filter = None
    return store


async def store_misses_pg(url: str, records: int, lookups: int) -> dict[str, dict[str, float]]:
    """A shared PostgreSQL store's misses: queries (through SQLAlchemy, through the
    reader), then answered by the key filter that the key feed keeps current (its beats'
    CPU, four a second, in the figures)."""
    engine = make_engine(url)
    peers = [PrivateKey.generate().peer_id() for _ in range(100)]
    try:
        async with SqlProviderStore(engine) as store:
            for start in range(0, records, 1000):
                await store.add_providers([(key(j), peers[j % 100], ()) for j in range(start, min(records, start + 1000))])
        misses = [key(records + i) for i in range(lookups)]
        async with without_key_filter(SqlProviderStore(engine)) as store:
            result = {"sqlalchemy": await cpu_per_call(store.get_providers, misses)}
        from dhtstore.data.fastread import open_reader

        async with open_reader(engine) as reader:
            async with without_key_filter(SqlProviderStore(engine, reader=reader)) as store:
                result["reader"] = await cpu_per_call(store.get_providers, misses)
            async with SqlProviderStore(engine, reader=reader) as store:
                with anyio.fail_after(60):  # built and current
                    while store.counters.get("key_filter_builds", 1) < 1 or not store.counters.get("filtered_misses", 1):
                        await store.get_providers(key(2**62))
                        await anyio.sleep(0.01)
                result["reader and the key feed's filter"] = await cpu_per_call(store.get_providers, misses)
                if store.counters.get("filtered_misses", 1) < lookups:
                    raise SystemExit("the key filter did not answer the misses: is the store at revision 0008?")
        return result
    finally:
        await engine.dispose()


async def own_list_misses_pg(url: str, records: int, misses: list[bytes]) -> dict[str, float]:
    """PostgreSQL keeps no list filter: a contains() is a query (the lookups of a tick one
    statement, where the checkout has that batching)."""
    from dhtstore.data.fastread import open_reader

    engine = make_engine(url)
    try:
        await ProvideListStore(engine).add([(f"cid{i}", key(i)) for i in range(records)], int(time.time()))
        async with open_reader(engine) as reader:
            return await cpu_per_call(ProvideListStore(engine, reader).contains, misses)
    finally:
        await engine.dispose()


async def raw_asyncpg_miss(url: str, misses: list[bytes]) -> float:
    """The same lookup as a prepared asyncpg statement, one caller: the ceiling."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        stmt = await conn.prepare("SELECT peer_id, received_at, expires_at FROM provider_records WHERE key_mh = $1 AND expires_at > $2")
        now = int(time.time())
        t = time.process_time()
        for k in misses:
            assert await stmt.fetch(k, now) == []
        return (time.process_time() - t) / len(misses) * 1e6
    finally:
        await conn.close()


def show(figures: dict[str, float], raw: float, ceiling: str = "raw sqlite3") -> None:
    print(f"    one caller: {figures['one_us']:.1f} us ({figures['one_us'] / raw:.1f}x {ceiling})")
    print(f"    {CONCURRENCY} concurrent: {figures['concurrent_us']:.1f} us ({figures['concurrent_us'] / raw:.1f}x {ceiling})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--lookups", type=int, default=5_000)
    parser.add_argument("--pg-url", help="also measure a shared PostgreSQL store, in a scratch database on this server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        url = default_store_url(Path(d))
        asyncio.run(create_or_upgrade(url))
        r = asyncio.run(store_misses(url, args.records, args.lookups))
        own = asyncio.run(own_list_misses(url, args.records, args.lookups))
        misses = [key(args.records + i) for i in range(args.lookups)]
        now = int(time.time())
        raw = raw_sqlite3_miss(
            url,
            "SELECT peer_id, received_at, expires_at FROM provider_records WHERE key_mh = ? AND expires_at > ?",
            lambda k: (k, now),
            misses,
        )
        raw_own = raw_sqlite3_miss(url, "SELECT 1 FROM provided_keys WHERE multihash = ? LIMIT 1", lambda k: (k,), misses)
    print(f"records {args.records:,}, misses {args.lookups:,} per mode; CPU per get_providers miss:")
    show(r, raw)
    print(f"  raw sqlite3 (same lookup, same run): {raw:.1f} us")
    print(f"provide list of {args.records:,} entries; CPU per contains() miss:")
    for path, figures in own.items():
        print(f"  through {path}:")
        show(figures, raw_own)
    print(f"  raw sqlite3 (same lookup, same run): {raw_own:.1f} us")
    if args.pg_url:
        asyncio.run(postgresql(args))


async def postgresql(args: argparse.Namespace) -> None:
    from scratchdb import scratch_database

    async with scratch_database(args.pg_url, "bench_miss") as url:
        await create_or_upgrade(url)
        misses = [key(args.records + i) for i in range(args.lookups)]
        figures = await store_misses_pg(url, args.records, args.lookups)
        own = await own_list_misses_pg(url, args.records, misses)
        raw = await raw_asyncpg_miss(url, misses)
    print(f"PostgreSQL (shared), {args.records:,} records; our process's CPU per get_providers miss:")
    for path, f in figures.items():
        print(f"  through {path}:")
        show(f, raw, "raw asyncpg")
    print(f"  raw asyncpg prepared statement (same lookup, same run): {raw:.1f} us")
    print(f"PostgreSQL provide list of {args.records:,} entries; our CPU per contains() miss through the reader:")
    show(own, raw, "raw asyncpg get_providers")
    from dhtstore.providerstore.keyfilter import HEADROOM

    try:
        from dhtstore.data.bloom import BloomFilter
    except ImportError:  # a checkout from before data.bloom
        from dhtstore.providerstore.keyfilter import BloomFilter  # type: ignore[attr-defined,no-redef]
    for n in (1_000_000, 10_000_000):
        print(f"  key filter for {n:,} keys: {BloomFilter(HEADROOM * n).nbytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
