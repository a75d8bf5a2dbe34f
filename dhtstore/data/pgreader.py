"""``data.fastread.Reader`` on PostgreSQL: a small asyncpg pool of its own, beside the
engine's, running the request path's few statements as asyncpg prepared statements
(each connection prepares a statement on first use and keeps it in its cache).

The SQLAlchemy statement is compiled once to asyncpg's ``$n`` SQL; each call binds the
parameters in the compiled order. Connections are opened on demand (no connection at
start), so a database that is down when the node starts is met as any read meets it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

POOL_SIZE = 4  # connections at most; each query holds one for a few hundred µs
CONNECT_TIMEOUT = 10.0  # seconds
_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialect __init__ is untyped


class PostgresReader:
    """See the module docstring; ``open`` starts one."""

    def __init__(self, pool: Any):
        self._pool = pool
        self._compiled: dict[ClauseElement, tuple[str, list[str], dict[str, Any]]] = {}  # SQL, order, compiled-in

    @classmethod
    @asynccontextmanager
    async def open(cls, url: URL) -> AsyncIterator[PostgresReader]:
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool = await asyncpg.create_pool(dsn, min_size=0, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT)
        try:
            yield cls(pool)
        finally:
            await pool.close()

    async def fetch(self, statement: ClauseElement, **params: Any) -> list[tuple[Any, ...]]:
        compiled = self._compiled.get(statement)
        if compiled is None:
            c = statement.compile(dialect=_DIALECT)
            assert isinstance(c, SQLCompiler) and c.positiontup is not None
            compiled = self._compiled[statement] = (str(c), list(c.positiontup), dict(c.params))
        sql, order, defaults = compiled
        args = [params[name] if name in params else defaults[name] for name in order]
        return [tuple(row) for row in await self._pool.fetch(sql, *args)]
