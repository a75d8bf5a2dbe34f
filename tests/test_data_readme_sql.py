"""The README's SQL queries run as written in sqlite3 and psql, and answer correctly."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import base58
import pytest
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine, sqlite_path
from dhtstore.data.models import ProvidedKeyRow
from dhtstore.kadkey import Key
from dhtstore.providerstore.sql import open_provider_store

README = Path(__file__).resolve().parents[1] / "README.md"
CID_V0 = "QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB"  # the CID in the README's first query


def readme_queries() -> list[str]:
    section = README.read_text().split("## Reading the store with SQL", 1)[1]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


async def _populate(url: str) -> list[str]:
    peers = [PrivateKey.generate().peer_id() for _ in range(3)]
    key = base58.b58decode(CID_V0)
    async with open_provider_store(url) as store:
        for p in peers:
            await store.add_provider(key, p, (bytes.fromhex("047f000001060fa1"),))
        await store.add_provider(bytes.fromhex("1203616263"), peers[0], ttl=timedelta(minutes=30))
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            insert(ProvidedKeyRow).values(
                cid=CID_V0, multihash=key, kad_key=Key.for_multihash(key).to_bytes(),
                added_at=0, next_due_at=1, attempts=2, last_error="timeout",
            )
        )
    await engine.dispose()
    return [p.to_base58() for p in peers]


def _run_sqlite(url: str, query: str) -> list[tuple[str, ...]]:
    path = sqlite_path(make_url(url))
    assert path is not None
    if shutil.which("sqlite3"):
        out = subprocess.run(["sqlite3", "-bail", "-separator", "|", str(path), query], capture_output=True, text=True)
        assert out.returncode == 0 and not out.stderr, out.stderr
        return [tuple(line.split("|")) for line in out.stdout.splitlines()]
    with sqlite3.connect(path) as conn:
        return [tuple("" if v is None else str(v) for v in row) for row in conn.execute(query)]


def _run_psql(url: str, query: str) -> list[tuple[str, ...]]:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    if shutil.which("psql"):
        out = subprocess.run(
            ["psql", plain, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-F", "|", "-c", query], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return [tuple(line.split("|")) for line in out.stdout.splitlines()]

    async def via_asyncpg() -> list[tuple[str, ...]]:
        conn = await asyncpg.connect(plain)
        try:
            return [tuple("" if v is None else str(v) for v in r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return anyio.run(via_asyncpg)


def test_readme_has_the_promised_queries() -> None:
    assert len(readme_queries()) >= 4


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_readme_queries_run_as_written(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_store_url" if backend == "sqlite" else "pg_store_url")
    peers = anyio.run(_populate, url)
    run = _run_sqlite if backend == "sqlite" else _run_psql
    providers, expiring, top, due, fresh = (run(url, q) for q in readme_queries()[:5])
    assert sorted(row[0] for row in providers) == sorted(peers)
    assert [(row[1]) for row in expiring] == [peers[0]]
    assert top[0] == (peers[0], "2")
    assert due == [(CID_V0, due[0][1], "2", "timeout")] and int(due[0][1]) < 0
    assert sorted(row[0] for row in fresh) == sorted(peers)
