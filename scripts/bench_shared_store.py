#!/usr/bin/env python3
"""Benchmark one PostgreSQL provider store shared by several processes (issue 7).

- Ingest: N provider records per process through ``SqlProviderStore.add_provider``
  (64 concurrent callers per process, as a busy server's handlers), first one process
  alone, then three at once on the same store (each its own keys, all from one pool of
  provider peers, so their ``peers`` upserts meet); records/s over the wall time.
- ``get_providers`` latency in each of the three processes, on keys another process
  wrote (every one must be found: the cross-process check), cold (first read) and
  repeated within the cache TTL.
- Cache policy on a shared store (one process, 16 concurrent readers of 200 hot keys): the
  TTL cache the store uses (1 s), no cache (TTL 0), and the single-process LRU that
  would hide other processes' writes; lookups/s and p50/p99.

    python scripts/bench_shared_store.py                  # 20k records per process
    python scripts/bench_shared_store.py --records 50000
    python scripts/bench_shared_store.py --ingest-only --repeat 3   # only the ingest ratio, 3 times
    DHTSTORE_BENCH_PG_URL=postgresql+asyncpg://postgres@127.0.0.1/test python scripts/bench_shared_store.py

Runs in a scratch database created (and dropped) through the given URL. Each process
is a fresh interpreter started with ``--worker``. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine
from dhtstore.data.models import metadata
from dhtstore.data.schema import create_or_upgrade
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.peerid import PeerId
from dhtstore.providerstore.sql import SHARED_CACHE_TTL, SqlProviderStore

CALLERS = 64
PROVIDERS = 1000
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
LOOKUPS = 2000
HOT_KEYS = 200
READERS = 16


def key(i: int) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(b"shared %d" % i).digest()).to_bytes()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5) * 1e3:.2f} ms, p99 {percentile(values, 0.99) * 1e3:.2f} ms"


def backend_cpu(pids: Iterable[int]) -> float | None:
    """CPU seconds used so far by these (local) PostgreSQL backends; None if not readable."""
    total = 0.0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return None
    return total


# -- worker (one process) ------------------------------------------------------------


async def worker(url: str, index: int, count: int, start_at: float, read_from: list[int], pool: list[str]) -> dict[str, Any]:
    peers = [PeerId(bytes.fromhex(p)) for p in pool]  # the same providers announce to every head
    rng = random.Random(index)
    app = f"dhtstore-bench-{index}"  # names this worker's PostgreSQL backends
    engine = make_engine(url, pool_size=CALLERS // 4, max_overflow=CALLERS, connect_args={"server_settings": {"application_name": app}})
    out: dict[str, Any] = {"index": index}
    async with SqlProviderStore(engine) as store:
        base = index * count
        todo = iter(range(count))

        async def caller() -> None:
            for j in todo:
                await store.add_provider(key(base + j), peers[j % PROVIDERS], (ADDR,))

        await anyio.sleep(max(0.0, start_at - time.time()))
        started, cpu = time.time(), time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(CALLERS):
                tg.start_soon(caller)
        out.update(started=started, ended=time.time(), cpu=time.process_time() - cpu, transactions=store.counters["transactions"])
        async with engine.connect() as conn:
            pids = (await conn.execute(text("SELECT pid FROM pg_stat_activity WHERE application_name = :app"), {"app": app})).scalars().all()
        out["server_cpu"] = backend_cpu(pids)
        if read_from:  # once every process has written all its records
            expected = count * (len(read_from) + 1)
            with anyio.fail_after(600):
                while (await store.stats()).records < expected:
                    await anyio.sleep(0.2)
            cold: list[float] = []
            warm: list[float] = []
            missing = 0
            for _ in range(LOOKUPS // 2):
                other = rng.choice(read_from)
                k = key(other * count + rng.randrange(count))
                for sink in (cold, warm):  # the second read is within the TTL
                    t = time.perf_counter()
                    found = await store.get_providers(k)
                    sink.append(time.perf_counter() - t)
                missing += not found
            out.update(cold=cold, warm=warm, missing=missing)
    await engine.dispose()
    return out


async def cache_policy(url: str, label: str, **options: Any) -> str:
    """READERS concurrent readers (a server's handlers) on HOT_KEYS keys for 3 s."""
    engine = make_engine(url, pool_size=READERS, max_overflow=0)
    async with SqlProviderStore(engine, **options) as store:
        keys = [key(i) for i in range(HOT_KEYS)]
        for k in keys:  # fill
            await store.get_providers(k)
        latencies: list[float] = []
        began = time.perf_counter()
        deadline = began + 3.0  # several TTL periods

        async def reader(rng: random.Random) -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                await store.get_providers(rng.choice(keys))
                latencies.append(time.perf_counter() - t)

        async with anyio.create_task_group() as tg:
            for i in range(READERS):
                tg.start_soon(reader, random.Random(i))
        rate = len(latencies) / (time.perf_counter() - began)
    await engine.dispose()
    return f"{label:<34} {rate:>9,.0f} lookups/s  {ms(latencies)}"


# -- driver ----------------------------------------------------------------------------


def spawn(url: str, count: int, n: int, pool: str, reads: bool = True) -> list[dict[str, Any]]:
    start_at = time.time() + 4.0  # past every process's imports and engine setup
    procs = []
    for i in range(n):
        read_from = [j for j in range(n) if j != i] if reads else []
        args = json.dumps({"url": url, "index": i, "count": count, "start_at": start_at, "read_from": read_from, "pool": pool})
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", args], stdout=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def admin(url: str, *statements: str) -> None:
    u = make_url(url)
    conn = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432, database=u.database)
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


def empty(url: str) -> None:
    anyio.run(partial(admin, url, *(f"DELETE FROM {t.name}" for t in reversed(metadata.sorted_tables)), "VACUUM ANALYZE"))


def ingest_line(label: str, results: list[dict[str, Any]], count: int) -> float:
    wall: float = max(r["ended"] for r in results) - min(r["started"] for r in results)
    rate = count * len(results) / wall
    txs = sum(r["transactions"] for r in results)
    busy = sum(r["cpu"] for r in results) / (wall * len(results))
    records = count * len(results)
    server = [r["server_cpu"] for r in results if r.get("server_cpu") is not None]
    cost = f"CPU per 1000 records: processes {sum(r['cpu'] for r in results) / records * 1e3 * 1e3:.0f} ms"
    if len(server) == len(results):  # the backends' CPU includes their connection setup
        cost += f", PostgreSQL backends {sum(server) / records * 1e3 * 1e3:.0f} ms"
    print(f"{label:<26} {records:>8,} records in {wall:6.2f} s = {rate:>8,.0f} records/s "
          f"({txs:,} transactions; each process on CPU {busy:.0%} of the time; {cost})")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000, help="records per process")
    parser.add_argument("--ingest-only", action="store_true", help="measure only the ingest (1 process, then 3)")
    parser.add_argument("--repeat", type=int, default=1, help="ingest measurements (1 then 3 processes) in a row")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        w = json.loads(args.worker)
        pool = json.loads(open(w["pool"]).read())
        print(json.dumps(anyio.run(worker, w["url"], w["index"], w["count"], w["start_at"], w["read_from"], pool)))
        return

    base = os.environ.get("DHTSTORE_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    name = f"dhtstore_bench_{secrets.token_hex(4)}"
    anyio.run(partial(admin, base, f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        anyio.run(create_or_upgrade, url)
        print(f"PostgreSQL shared store, {args.records:,} records per process, {CALLERS} concurrent callers each, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        pool = os.path.join(tempfile.mkdtemp(prefix="bench-shared-"), "providers.json")
        with open(pool, "w") as f:
            json.dump([PrivateKey.generate().peer_id().to_bytes().hex() for _ in range(PROVIDERS)], f)
        for run in range(args.repeat):
            if run:
                empty(url)
            one = ingest_line("1 process", spawn(url, args.records, 1, pool), args.records)
            empty(url)
            three_results = spawn(url, args.records, 3, pool, reads=not args.ingest_only)
            three = ingest_line("3 processes, one store", three_results, args.records)
            print(f"three writers / one: {three / one:.2f}x (load average now {os.getloadavg()[0]:.1f})")
        if args.ingest_only:
            return
        cold = [x for r in three_results for x in r["cold"]]
        warm = [x for r in three_results for x in r["warm"]]
        missing = sum(r["missing"] for r in three_results)
        print(f"get_providers of another process's key: first read {ms(cold)}; again within {SHARED_CACHE_TTL:g} s {ms(warm)}; "
              f"not found {missing} of {len(cold)}")
        print(f"cache policy, {READERS} readers of {HOT_KEYS} hot keys, one process:")
        for label, options in (
            (f"TTL {SHARED_CACHE_TTL:g} s (shared default)", {}),
            ("no cache (TTL 0)", {"shared_cache_ttl": 0.0}),
            ("LRU, no TTL (single process)", {"shared": False}),
        ):
            print("  " + anyio.run(partial(cache_policy, url, label, **options)))
    finally:
        anyio.run(partial(admin, base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
