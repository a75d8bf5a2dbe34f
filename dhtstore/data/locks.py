"""Store-wide locks for work that one process of a shared store must do alone.

``try_advisory_lock``: on PostgreSQL, a session advisory lock held on its own
connection. If the process dies or loses that connection, PostgreSQL releases the
lock and a standby process takes it over: there is no claim to expire by hand. On
SQLite a store has one node process, so the lock is always granted.

``take_turn``: for a short read-check-write transaction that processes must not
interleave, a transaction-scoped advisory lock on PostgreSQL; on SQLite the
transaction's first write already excludes every other writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


@asynccontextmanager
async def try_advisory_lock(engine: AsyncEngine, lock_id: int) -> AsyncIterator[AsyncConnection | None]:
    """Yield the connection holding ``lock_id`` (probe it to know the lock is still
    held), or None when another process holds it. SQLite yields a plain connection."""
    async with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            yield conn
            return
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not (await conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id})).scalar():
            yield None
            return
        try:
            yield conn
        finally:
            try:
                await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            except Exception:  # connection gone: PostgreSQL released the lock with it
                pass


async def take_turn(conn: AsyncConnection, lock_id: int) -> None:
    """Wait until no other transaction holds ``lock_id``; hold it until this one ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
