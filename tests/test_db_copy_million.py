"""Issue 7: a 1M-row SQLite store copied to PostgreSQL and back compares equal."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from dhtstore.data.copy import copy_store
from dhtstore.data.engine import default_store_url, parse_store_url, sqlite_path

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres]

ROWS = 1_000_000
PROVIDERS = 1000


def fill(url: str) -> None:
    """1M provider records from 1,000 peers, written with plain sqlite3 (fast)."""
    path = sqlite_path(parse_store_url(url))
    peers = [b"\x00\x24\x08\x01\x12\x20" + hashlib.sha256(b"peer %d" % i).digest() for i in range(PROVIDERS)]
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO peers (peer_id, peer_id_text, addrs, addrs_expire_at, protocols, agent, first_seen_at, last_seen_at)"
            " VALUES (?, ?, ?, 0, '', '', 1, 1)",
            ((p, p.hex(), b"") for p in peers),
        )
        db.executemany(
            "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            (
                (b"\x12\x20" + hashlib.sha256(b"%d" % i).digest(), peers[i % PROVIDERS], str(i), 1_800_000_000, 1_800_172_800)
                for i in range(ROWS - PROVIDERS)
            ),
        )


async def test_a_million_rows_to_postgresql_and_back(sqlite_store_url: str, pg_store_url: str, tmp_path: Path) -> None:
    fill(sqlite_store_url)
    there = await copy_store(sqlite_store_url, pg_store_url)
    assert there.matches and there.rows == ROWS
    back_url = default_store_url(tmp_path / "back")
    back = await copy_store(pg_store_url, back_url)
    assert back.matches and back.rows == ROWS
    assert [t.source_checksum for t in back.tables] == [t.source_checksum for t in there.tables]
