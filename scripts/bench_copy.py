#!/usr/bin/env python3
"""Benchmark ``dhtstore db copy``: rows per second SQLite → PostgreSQL → SQLite.

    python scripts/bench_copy.py --rows 1000000 [--pg postgresql+asyncpg://…/db] [--batch-size 5000]

Builds a SQLite store holding ``--rows`` provider records (the table that grows),
copies it into an empty PostgreSQL database created for the run and back into a new
SQLite file, and prints rows/s for each leg and the peak RSS of this process (the
copy streams, so it should not grow with the row count). Needs PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import resource
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from dhtstore.data.copy import DEFAULT_BATCH_SIZE, copy_store
from dhtstore.data.engine import default_store_url
from dhtstore.data.schema import create_or_upgrade


def fill_sqlite(path: Path, rows: int) -> None:
    """Provider records straight through sqlite3: the fastest way to a big source."""
    db = sqlite3.connect(path)
    chunk = 50_000
    for start in range(0, rows, chunk):
        batch = []
        for i in range(start, min(rows, start + chunk)):
            digest = hashlib.sha256(i.to_bytes(8, "big")).digest()
            batch.append((b"\x12\x20" + digest, b"\x00\x24\x08\x01\x12\x20" + digest[::-1], f"Qm{i}", 1_700_000_000, 1_700_172_800))
        db.executemany(
            "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at) VALUES (?, ?, ?, ?, ?)", batch
        )
        db.commit()
    db.close()


async def pg_admin(url: str, statement: str) -> None:
    u = make_url(url)
    conn = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432, database=u.database)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def leg(label: str, source: str, target: str, batch_size: int) -> None:
    started = time.perf_counter()
    report = await copy_store(source, target, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    assert report.matches
    print(f"{label}: {report.rows} rows in {elapsed:.1f} s = {report.rows / elapsed:,.0f} rows/s (copy + verification)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source = default_store_url(Path(tmp) / "source")
        await create_or_upgrade(source)
        started = time.perf_counter()
        fill_sqlite(Path(tmp) / "source" / "dhtstore.db", args.rows)
        print(f"filled the source with {args.rows} provider records in {time.perf_counter() - started:.1f} s")

        name = f"dhtstore_bench_{secrets.token_hex(4)}"
        await pg_admin(args.pg, f'CREATE DATABASE "{name}"')
        pg = make_url(args.pg).set(database=name).render_as_string(hide_password=False)
        try:
            await leg("SQLite -> PostgreSQL", source, pg, args.batch_size)
            await leg("PostgreSQL -> SQLite", pg, default_store_url(Path(tmp) / "back"), args.batch_size)
        finally:
            await pg_admin(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
