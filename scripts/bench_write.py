#!/usr/bin/env python3
"""Microbenchmark: the CPU of the provider store's durable write path alone, as a kad
stream's run of ADD_PROVIDERs reaches it (``SqlProviderStore.add_providers`` of ten
records, each caller waiting for its commit), with 8 and 32 callers in flight, on a
SQLite store pre-filled with ``--records`` records (and PostgreSQL with ``--pg-url``).
CPU is this process's (``time.process_time``: every thread, the writer's too), per
record; other processes' load does not enter it, so two checkouts compare well:

    PYTHONPATH=/tmp/before python scripts/bench_write.py   # another checkout's store
    PYTHONPATH=$PWD python scripts/bench_write.py --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Every caller announces new keys from one of 1,000 providers with one address, as the
server benchmark's load does. The run checks that every record was committed (a count
of the table), and fails loudly otherwise. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

import anyio
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import default_store_url, make_engine
from dhtstore.data.schema import create_or_upgrade
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.peerid import PeerId
from dhtstore.providerstore.sql import SqlProviderStore

RUN = 10  # records per add_providers call: a stream's run of ADD_PROVIDERs before its PING
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
PROVIDERS = 1000


def new_key() -> bytes:
    return Multihash(SHA2_256, secrets.token_bytes(32)).to_bytes()


async def fill(store: SqlProviderStore, peers: list[PeerId], records: int) -> None:
    for start in range(0, records, 1000):
        await store.add_providers([(new_key(), peers[j % PROVIDERS], (ADDR,)) for j in range(start, min(records, start + 1000))])


async def cpu_per_record(url: str, records: int, calls: int, callers: int) -> tuple[float, float]:
    """(CPU µs per record, records per wall second) of ``calls`` runs of RUN records."""
    engine = make_engine(url)
    peers = [PrivateKey.generate().peer_id() for _ in range(PROVIDERS)]
    try:
        async with SqlProviderStore(engine) as store:
            await fill(store, peers, records)
        async with engine.connect() as conn:
            before = (await conn.execute(text("SELECT count(*) FROM provider_records"))).scalar_one()
        async with SqlProviderStore(engine) as store:
            await anyio.sleep(1)  # the key filter's build, out of the figures
            runs = [[(new_key(), peers[(c * RUN + j) % PROVIDERS], (ADDR,)) for j in range(RUN)] for c in range(calls)]

            async def caller(first: int) -> None:
                for run in runs[first::callers]:
                    await store.add_providers(run)

            cpu, wall = time.process_time(), time.perf_counter()
            async with anyio.create_task_group() as tg:
                for c in range(callers):
                    tg.start_soon(caller, c)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        async with engine.connect() as conn:
            after = (await conn.execute(text("SELECT count(*) FROM provider_records"))).scalar_one()
        if after - before != calls * RUN:
            raise SystemExit(f"{after - before} records committed, {calls * RUN} acknowledged")
        return cpu / (calls * RUN) * 1e6, calls * RUN / wall
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records pre-filled (default 100k)")
    parser.add_argument("--calls", type=int, default=2_000, help="add_providers calls of ten records per measurement")
    parser.add_argument("--callers", default="8,32")
    parser.add_argument("--pg-url", help="also a PostgreSQL store, in a scratch database on this server")
    args = parser.parse_args()
    stores = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    for backend in stores:
        for callers in (int(n) for n in args.callers.split(",")):
            if backend == "sqlite":
                with tempfile.TemporaryDirectory() as d:
                    url = default_store_url(Path(d))
                    asyncio.run(create_or_upgrade(url))
                    cpu, rate = asyncio.run(cpu_per_record(url, args.records, args.calls, callers))
            else:
                cpu, rate = asyncio.run(on_postgresql(args, callers))
            print(f"{backend}, {callers} callers: {cpu:.1f} us CPU per record, {rate:,.0f} records/s", flush=True)


async def on_postgresql(args: argparse.Namespace, callers: int) -> tuple[float, float]:
    from scratchdb import scratch_database

    async with scratch_database(args.pg_url, "bench_write") as url:
        await create_or_upgrade(url)
        return await cpu_per_record(url, args.records, args.calls, callers)


if __name__ == "__main__":
    main()
