"""A scratch PostgreSQL database for a benchmark: created empty, dropped on exit."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy.engine import make_url

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def scratch_database(pg_url: str, prefix: str) -> AsyncIterator[str]:
    """The store URL of a new database ``<prefix>_<pid>`` on ``pg_url``'s server."""
    server = make_url(pg_url)
    name = f"{prefix}_{os.getpid()}"
    conn = await asyncpg.connect(server.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(f"CREATE DATABASE {name}")
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()
