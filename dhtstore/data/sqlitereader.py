"""``data.fastread.Reader`` on a SQLite file: one plain ``sqlite3`` connection on a
thread of its own (statements compiled once, then in sqlite3's statement cache), sent
the lookups that arrive in one event-loop tick as one batch: one hand-off each way per
batch, where aiosqlite takes two per statement.

Each lookup is its own autocommit read, so it sees every transaction committed before it
started, by this process or another (WAL readers never block writers, nor they them).
The connection is ``query_only``: this path cannot write. Only for a file: an
in-memory database is private to its connection.

The reader uses asyncio directly (futures, ``call_soon_threadsafe``): anyio's thread
portal costs more than the lookup it carries, and the node runs anyio on asyncio.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement

from .engine import SQLITE_BUSY_TIMEOUT_MS

Row = tuple[Any, ...]

_Lookup = tuple[str, dict[str, Any], "asyncio.Future[list[Row]]"]


class SqliteReader:
    """See the module docstring; ``open`` starts one."""

    def __init__(self, path: Path):
        self._path = path
        self._compiled: dict[ClauseElement, tuple[str, dict[str, Any]]] = {}  # SQL, compiled-in values
        self._batches: queue.SimpleQueue[list[_Lookup] | None] = queue.SimpleQueue()
        self._pending: list[_Lookup] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[SqliteReader]:
        """A running reader of the SQLite file at ``path``, stopped on exit."""
        reader = cls(path)
        reader._loop = asyncio.get_running_loop()
        reader._thread = threading.Thread(target=reader._serve, name=f"sqlite-reader {path.name}", daemon=True)
        reader._thread.start()
        try:
            yield reader
        finally:
            reader._batches.put(None)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(reader._thread.join)

    async def fetch(self, statement: ClauseElement, **params: Any) -> list[Row]:
        """The rows ``statement`` returns; raises ``sqlite3.Error`` as sqlite3 does."""
        assert self._loop is not None, "use SqliteReader.open"
        compiled = self._compiled.get(statement)
        if compiled is None:
            c = statement.compile(dialect=sqlite.dialect(paramstyle="named"))
            compiled = self._compiled[statement] = (str(c), {k: v for k, v in c.params.items() if v is not None})
        sql, defaults = compiled
        future: asyncio.Future[list[Row]] = self._loop.create_future()
        self._pending.append((sql, {**defaults, **params}, future))
        if len(self._pending) == 1:
            self._loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._batches.put(batch)

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        failure: sqlite3.Error | None = None  # the open's: every lookup gets it
        try:
            uri = f"{self._path.resolve().as_uri()}?mode=rw"  # never creates the file
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            failure = exc
        while (batch := self._batches.get()) is not None:
            results: list[list[Row] | BaseException] = []
            for sql, params, _ in batch:
                if conn is None:
                    assert failure is not None
                    results.append(failure)
                    continue
                try:
                    results.append(conn.execute(sql, params).fetchall())
                except sqlite3.Error as exc:
                    results.append(exc)
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_deliver, batch, results)
            except RuntimeError:  # the loop closed under us: nobody waits any more
                break
        if conn is not None:
            conn.close()


def _deliver(batch: list[_Lookup], results: list[list[Row] | BaseException]) -> None:
    for (_, _, future), result in zip(batch, results):
        if future.done():  # its caller was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
