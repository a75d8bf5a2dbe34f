"""Alembic environment: runs the revisions on the async engine (SQLite or PostgreSQL).

The store URL comes from, in order: a connection handed over by the caller
(``config.attributes["connection"]``, used inside a running event loop), the URL the
``dhtstore db`` commands set (``config.attributes["url"]``), ``DHTSTORE_STORE``, or
``sqlalchemy.url`` in alembic.ini.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from dhtstore.data.engine import make_engine
from dhtstore.data.models import metadata

config = context.config


def store_url() -> str:
    url = config.attributes.get("url") or os.environ.get("DHTSTORE_STORE") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no store URL: set DHTSTORE_STORE or sqlalchemy.url in alembic.ini")
    return url


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_on_new_engine() -> None:
    engine = make_engine(store_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=store_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    run_on(shared)
else:
    asyncio.run(run_on_new_engine())
