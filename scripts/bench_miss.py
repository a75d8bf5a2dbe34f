#!/usr/bin/env python3
"""Microbenchmark: the CPU of one ``SqlProviderStore.get_providers`` on a key with no
record (a GET_PROVIDERS miss), one caller at a time and 32 concurrent, beside the same
indexed lookup with plain ``sqlite3`` in the same run (the ceiling), on a SQLite store
holding ``--records`` records. CPU is the process's (all threads: aiosqlite's too).

    python scripts/bench_miss.py                     # 20k records, 5,000 misses per mode
    PYTHONPATH=/tmp/base python scripts/bench_miss.py  # the same against another checkout

Figures are printed, not asserted; BENCHMARKS.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio
from sqlalchemy.engine import make_url

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import default_store_url, make_engine
from dhtstore.data.schema import create_or_upgrade
from dhtstore.multihash import SHA2_256, Multihash
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
            misses = [key(records + i) for i in range(lookups)]
            t = time.process_time()
            for k in misses:
                assert await store.get_providers(k) == []
            one = (time.process_time() - t) / lookups

            async def caller(c: int) -> None:
                for k in misses[c::CONCURRENCY]:
                    await store.get_providers(k)

            t = time.process_time()
            async with anyio.create_task_group() as tg:
                for c in range(CONCURRENCY):
                    tg.start_soon(caller, c)
            many = (time.process_time() - t) / lookups
    finally:
        await engine.dispose()
    return {"one_us": one * 1e6, "concurrent_us": many * 1e6}


def raw_sqlite3_miss(url: str, records: int, lookups: int) -> float:
    conn = sqlite3.connect(make_url(url).database or "")
    stmt = "SELECT peer_id, received_at, expires_at FROM provider_records WHERE key_mh = ? AND expires_at > ?"
    misses = [key(records + i) for i in range(lookups)]
    now = int(time.time())
    t = time.process_time()
    for k in misses:
        assert conn.execute(stmt, (k, now)).fetchall() == []
    cpu = (time.process_time() - t) / lookups
    conn.close()
    return cpu * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--lookups", type=int, default=5_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        url = default_store_url(Path(d))
        asyncio.run(create_or_upgrade(url))
        r = asyncio.run(store_misses(url, args.records, args.lookups))
        raw = raw_sqlite3_miss(url, args.records, args.lookups)
    print(f"records {args.records:,}, misses {args.lookups:,} per mode; CPU per get_providers miss:")
    print(f"  one caller: {r['one_us']:.1f} us ({r['one_us'] / raw:.1f}x raw sqlite3)")
    print(f"  {CONCURRENCY} concurrent: {r['concurrent_us']:.1f} us ({r['concurrent_us'] / raw:.1f}x raw sqlite3)")
    print(f"  raw sqlite3 (same lookup, same run): {raw:.1f} us")
    try:
        from dhtstore.providerstore.keyfilter import HEADROOM, BloomFilter
    except ImportError:
        return
    for n in (1_000_000, 10_000_000):
        print(f"  key filter for {n:,} keys: {BloomFilter(HEADROOM * n).nbytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
