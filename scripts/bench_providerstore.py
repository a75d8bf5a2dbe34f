#!/usr/bin/env python3
"""Benchmark the SQL provider store (issue 2): ingest and get_providers, SQLite and PostgreSQL.

For each backend, in a fresh process (so peak RSS is that backend's alone):
- ingest N provider records through ``SqlProviderStore.add_provider`` with 64
  concurrent writers (each record: one key, one provider, one address);
- ``get_providers`` on random keys with a cold cache (keys not looked up before; the
  LRU holds 256 keys) and with a warm one (a set of keys that fits in the LRU);
- bytes on disk per record and peak RSS.
Then the ceiling: the same rows upserted with plain ``sqlite3`` ``executemany`` in one
transaction, and our SQLite ingest as a fraction of it.

    python scripts/bench_providerstore.py                      # 100k records, SQLite + PostgreSQL
    python scripts/bench_providerstore.py --records 1000000 --backends sqlite
    python scripts/bench_providerstore.py --records 10000000 --backends sqlite --no-ceiling
    DHTSTORE_BENCH_PG_URL=postgresql+asyncpg://postgres@127.0.0.1/test python scripts/bench_providerstore.py

PostgreSQL runs in a scratch database created (and dropped) through the given URL.
Figures are printed, not asserted; BENCHMARKS.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dhtstore.amino import PROVIDE_VALIDITY, PROVIDER_ADDR_TTL
from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.addrs import pack_addrs
from dhtstore.data.engine import default_store_url, make_engine
from dhtstore.data.models import metadata
from dhtstore.data.schema import create_or_upgrade
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.peerid import PeerId
from dhtstore.providerstore.sql import SqlProviderStore
from dhtstore.providerstore.validation import base58btc

WRITERS = 64
PROVIDERS = 1000  # distinct provider peers; record j is (key j // 2, peer j % PROVIDERS)
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
LOOKUPS = 2000
WARM_KEYS = 200


def key(i: int) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(i.to_bytes(8, "big")).digest()).to_bytes()


def peers() -> list[PeerId]:
    return [PrivateKey.generate().peer_id() for _ in range(PROVIDERS)]


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def pg_admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def bytes_on_disk(engine: AsyncEngine, url: str) -> int:
    if engine.dialect.name == "postgresql":
        tables = [t.name for t in metadata.sorted_tables]
        total = 0
        async with engine.connect() as conn:
            for t in tables:
                total += int((await conn.execute(text(f"SELECT pg_total_relation_size('{t}')"))).scalar_one())
        return total
    async with engine.connect() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    path = Path(make_url(url).database or "")
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


async def run_backend(url: str, n: int) -> dict[str, float]:
    await create_or_upgrade(url)
    provider_ids = peers()
    engine = make_engine(url, pool_size=8, max_overflow=0)
    result: dict[str, float] = {"records": n}
    try:
        async with SqlProviderStore(engine) as store:

            async def writer(w: int) -> None:
                for j in range(w, n, WRITERS):
                    await store.add_provider(key(j // 2), provider_ids[j % PROVIDERS], (ADDR,))

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for w in range(WRITERS):
                    tg.start_soon(writer, w)
            elapsed = time.perf_counter() - started
            result["ingest_records_per_s"] = n / elapsed
            result["transactions"] = store.counters["transactions"]
            result["records_per_transaction"] = store.counters["records_written"] / max(store.counters["transactions"], 1)

            rng = random.Random(1)
            keys = n // 2
            cold: list[float] = []
            for i in rng.sample(range(keys), min(LOOKUPS, keys)):
                t = time.perf_counter()
                found = await store.get_providers(key(i))
                cold.append(time.perf_counter() - t)
                assert found, "a stored key has providers"
            warm_set = rng.sample(range(keys), min(WARM_KEYS, keys))
            for i in warm_set:
                await store.get_providers(key(i))
            warm: list[float] = []
            for _ in range(LOOKUPS):
                k = key(rng.choice(warm_set))
                t = time.perf_counter()
                await store.get_providers(k)
                warm.append(time.perf_counter() - t)
            ms = 1000
            result.update(
                cold_p50_ms=percentile(cold, 50) * ms, cold_p99_ms=percentile(cold, 99) * ms,
                warm_p50_ms=percentile(warm, 50) * ms, warm_p99_ms=percentile(warm, 99) * ms,
                cold_mean_ms=statistics.fmean(cold) * ms,
            )
        result["bytes_per_record"] = await bytes_on_disk(engine, url) / n
    finally:
        await engine.dispose()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def raw_sqlite_ceiling(url: str, n: int) -> dict[str, float]:
    """The same upserts (provider_records and peers) with sqlite3 executemany, one transaction."""
    asyncio.run(create_or_upgrade(url))
    provider_ids = [p.to_bytes() for p in peers()]
    now = int(time.time())
    expires, addrs_expire = now + int(PROVIDE_VALIDITY.total_seconds()), now + int(PROVIDER_ADDR_TTL.total_seconds())
    conn = sqlite3.connect(make_url(url).database or "", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    packed = pack_addrs((ADDR,))
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO peers (peer_id, peer_id_text, addrs, addrs_expire_at, protocols, agent, first_seen_at, last_seen_at)"
        " VALUES (?, ?, ?, ?, '', '', ?, ?) ON CONFLICT (peer_id) DO UPDATE SET addrs = excluded.addrs,"
        " addrs_expire_at = excluded.addrs_expire_at, last_seen_at = excluded.last_seen_at",
        ((p, base58btc(p), packed, addrs_expire, now, now) for p in provider_ids),
    )
    conn.executemany(
        "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (key_mh, peer_id) DO UPDATE SET received_at = excluded.received_at, expires_at = excluded.expires_at",
        (
            (k, provider_ids[j % PROVIDERS], base58btc(k), now, expires)
            for j in range(n)
            for k in (key(j // 2),)
        ),
    )
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return {"records": n, "ingest_records_per_s": n / elapsed, "peak_rss_mb": peak_rss_mb()}


def child(backend: str, n: int, pg_url: str) -> dict[str, float]:
    if backend == "raw-sqlite3":
        with tempfile.TemporaryDirectory() as d:
            return raw_sqlite_ceiling(default_store_url(Path(d)), n)
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            return asyncio.run(run_backend(default_store_url(Path(d)), n))
    name = f"dhtstore_bench_{secrets.token_hex(4)}"
    asyncio.run(pg_admin(pg_url, f'CREATE DATABASE "{name}"'))
    try:
        return asyncio.run(run_backend(make_url(pg_url).set(database=name).render_as_string(hide_password=False), n))
    finally:
        asyncio.run(pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--pg-url", default=os.environ.get("DHTSTORE_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--no-ceiling", action="store_true", help="skip the raw sqlite3 executemany run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.records, args.pg_url)))
        return
    results = {}
    for backend in [*([] if args.no_ceiling else ["raw-sqlite3"]), *args.backends.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--child", backend, "--records", str(args.records), "--pg-url", args.pg_url],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            print(f"{backend}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    ceiling = results.get("raw-sqlite3", {}).get("ingest_records_per_s")
    print(f"records: {args.records:,}, writers: {WRITERS}, providers: {PROVIDERS}, lookups: {LOOKUPS}")
    for backend, r in results.items():
        if backend == "raw-sqlite3":
            print(f"raw sqlite3 executemany (ceiling): {r['ingest_records_per_s']:,.0f} records/s, peak RSS {r['peak_rss_mb']:.0f} MB")
            continue
        share = f" ({r['ingest_records_per_s'] / ceiling:.0%} of the raw sqlite3 ceiling)" if ceiling else ""
        print(
            f"{backend}: ingest {r['ingest_records_per_s']:,.0f} records/s{share}, "
            f"{r['records_per_transaction']:.0f} records/transaction; "
            f"get_providers warm p50 {r['warm_p50_ms']:.3f} ms p99 {r['warm_p99_ms']:.3f} ms, "
            f"cold p50 {r['cold_p50_ms']:.3f} ms p99 {r['cold_p99_ms']:.3f} ms; "
            f"{r['bytes_per_record']:.0f} bytes/record on disk; peak RSS {r['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
