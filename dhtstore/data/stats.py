"""What a store holds: rows per table, provider records about to expire, bytes used."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .engine import sqlite_path, store_size_bytes
from .models import ProviderRecordRow, metadata

EXPIRING_WINDOW = 3600  # seconds: "provider records expiring within the hour", here and in ProviderStoreStats


@dataclass(frozen=True)
class StoreStats:
    rows: dict[str, int]  # table name -> row count, every table of the schema
    provider_records_expiring_within_hour: int
    size_bytes: int | None


async def store_stats(engine: AsyncEngine, now: float | None = None) -> StoreStats:
    t = int(time.time() if now is None else now)
    rows: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows[table.name] = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
        expiring = (
            await conn.execute(
                select(func.count()).where(ProviderRecordRow.expires_at > t, ProviderRecordRow.expires_at <= t + EXPIRING_WINDOW)
            )
        ).scalar_one()
        if engine.dialect.name == "postgresql":
            size = (await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar_one()
        else:
            size = store_size_bytes(engine.url) if sqlite_path(engine.url) else None
    return StoreStats(dict(sorted(rows.items())), expiring, size)
