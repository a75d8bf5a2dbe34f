"""The engine factory: SQLite pragmas on every connection, URLs checked and redacted."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from dhtstore.data.engine import make_engine, parse_store_url, redact
from dhtstore.errors import StoreError

pytestmark = pytest.mark.anyio


async def test_sqlite_connections_get_wal_normal_sync_foreign_keys_and_busy_timeout(sqlite_store_url: str) -> None:
    engine = make_engine(sqlite_store_url)
    try:
        async with engine.connect() as conn:
            values = [
                (await conn.execute(text(f"PRAGMA {name}"))).scalar_one()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            ]
    finally:
        await engine.dispose()
    assert values == ["wal", 1, 1, 10_000]  # synchronous 1 = NORMAL


def test_plain_driver_names_become_the_async_ones() -> None:
    assert parse_store_url("sqlite:////tmp/x.db").drivername == "sqlite+aiosqlite"
    assert parse_store_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(StoreError, match="unsupported"):
        parse_store_url("mysql+aiomysql://u@h/db")


def test_redact_hides_the_password() -> None:
    assert "s3cret" not in redact("postgresql+asyncpg://user:s3cret@host/db")
