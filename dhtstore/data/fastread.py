"""Reads on the request path without SQLAlchemy's asyncio layer.

A lookup through SQLAlchemy's asyncio layer costs about 600 µs of CPU (the greenlet
hop, the pool checkout, and on SQLite aiosqlite's two thread hand-offs per statement)
where the indexed lookup itself costs 3-6 µs on SQLite. A GET_PROVIDERS pays one for
the node's own provide list, and one for the provider records of every key the key
filter and the cache cannot answer. A ``Reader`` runs those few statements on the
database's own driver: a plain ``sqlite3`` connection on a thread (``sqlitereader``),
or an asyncpg pool with its prepared statements (``pgreader``). Statements stay
SQLAlchemy Core, written once; the ORM and the engine keep everything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement

from .dialects import is_postgresql
from .engine import sqlite_path
from .pgreader import PostgresReader
from .sqlitereader import SqliteReader

Row = tuple[Any, ...]


class Reader(Protocol):
    async def fetch(self, statement: ClauseElement, **params: Any) -> list[Row]:
        """The rows a (read-only) ``statement`` returns with ``params`` bound; raises the
        driver's error (``data.failures.DATABASE_ERRORS``)."""
        ...


@asynccontextmanager
async def open_reader(engine: AsyncEngine) -> AsyncIterator[Reader | None]:
    """A reader of ``engine``'s database, closed on exit; None for an in-memory SQLite."""
    path = sqlite_path(engine.url)
    if is_postgresql(engine):
        async with PostgresReader.open(engine.url) as reader:
            yield reader
    elif path is not None:
        async with SqliteReader.open(path) as sqlite_reader:
            yield sqlite_reader
    else:
        yield None
