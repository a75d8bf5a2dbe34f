"""The SQLite write path: a batch is one transaction of at most three statements, run
on a plain ``sqlite3`` connection on a thread of its own.

Through SQLAlchemy's asyncio layer each statement cost a greenlet hop, a pool checkout
and two aiosqlite thread hand-offs (13 % of an ADD_PROVIDER's CPU at 8 connections);
here a batch is one hand-off each way, and the statements are compiled once to the
driver's SQL and run with positional rows (``executemany``).

A SQLite store has one writer at a time (the file's write lock, taken up front by
``BEGIN IMMEDIATE`` and waited for up to the busy timeout), so the order of the
statements' rows does not matter. The connection has the engine's settings (WAL,
synchronous=NORMAL, foreign keys): a batch whose ``write`` returned is committed to
the WAL and survives the process being killed; only a power loss can take the last ones.
Only for a file: an in-memory database is private to its connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.addrs import pack_addrs
from ..data.dialects import upsert
from ..data.engine import SQLITE_BUSY_TIMEOUT_MS, sqlite_path
from ..data.models import PeerRow, ProviderRecordRow
from .peerrows import PeerRows, addrs_expire_at
from .pending import PendingRecord, record_rows

T = TypeVar("T")

LIVE_BATCH = 500  # keys per read of the quotas' live providers: under SQLite's bound parameters
_PEER_COLUMNS = ["peer_id", "peer_id_text", "addrs", "addrs_expire_at", "protocols", "agent", "first_seen_at", "last_seen_at"]


class SqliteWritePath:
    holds_connection = False  # a local file has no connection to lose

    def __init__(self, engine: AsyncEngine, peer_rows: PeerRows):
        path = sqlite_path(engine.url)
        if path is None:
            raise ValueError("the SQLite provider store needs a database file (an in-memory one is private to its connection)")
        self._path: Path = path
        self._peer_rows = peer_rows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-writer {path.name}")
        self._conn: sqlite3.Connection | None = None  # opened on the writer thread, on first use
        self._upsert_records = self._sql(
            upsert(engine, ProviderRecordRow, ["key_mh", "peer_id"], ["received_at", "expires_at"]),
            ["key_mh", "peer_id", "key_b58", "received_at", "expires_at"], engine,
        )
        # A row with addresses replaces them, one without keeps them.
        self._upsert_peer_addrs = self._sql(
            upsert(engine, PeerRow, ["peer_id"], ["addrs", "addrs_expire_at", "last_seen_at"]), _PEER_COLUMNS, engine
        )
        self._upsert_peer_seen = self._sql(upsert(engine, PeerRow, ["peer_id"], ["last_seen_at"]), _PEER_COLUMNS, engine)

    @staticmethod
    def _sql(statement: Any, columns: list[str], engine: AsyncEngine) -> str:
        compiled = statement.compile(dialect=engine.dialect, column_keys=columns)
        assert compiled.positiontup == columns, compiled.positiontup  # the rows' tuple order
        return str(compiled)

    async def write(self, batch: list[PendingRecord]) -> None:
        """Commit the batch's records and its providers' ``peers`` rows."""
        written = self._peer_rows.to_write(batch)
        with_addrs: list[tuple[Any, ...]] = []
        without: list[tuple[Any, ...]] = []
        for p in written:
            row = (p.peer, p.peer_text, pack_addrs(p.addrs), addrs_expire_at(p), "", "", p.received_at, p.received_at)
            (with_addrs if p.addrs else without).append(row)
        await self._on_thread(self._write, with_addrs, without, record_rows(batch))
        self._peer_rows.committed(written)

    async def live_providers(self, keys: list[bytes], now: int) -> list[tuple[bytes, bytes]]:
        rows = await self._on_thread(self._live_providers, keys)
        # expired rows left out here, not by an index: see postgreswrite
        return [(bytes(k), bytes(p)) for k, p, expires_at in rows if expires_at > now]

    async def close(self) -> None:
        await self._on_thread(self._close)
        self._executor.shutdown(wait=True)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # asyncio's executor hand-off directly: anyio's thread portal costs more than a
        # small batch's statements (the caller, the group commit, shields the wait).
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- on the writer thread --------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = f"{self._path.resolve().as_uri()}?mode=rw"  # never creates the file
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _write(self, with_addrs: Sequence[tuple[Any, ...]], without: Sequence[tuple[Any, ...]], rows: Sequence[tuple[Any, ...]]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if with_addrs:
                conn.executemany(self._upsert_peer_addrs, with_addrs)
            if without:
                conn.executemany(self._upsert_peer_seen, without)
            conn.executemany(self._upsert_records, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _live_providers(self, keys: list[bytes]) -> list[tuple[Any, ...]]:
        conn = self._connection()
        found: list[tuple[Any, ...]] = []
        for i in range(0, len(keys), LIVE_BATCH):
            chunk = keys[i : i + LIVE_BATCH]
            sql = f"SELECT key_mh, peer_id, expires_at FROM provider_records WHERE key_mh IN ({','.join('?' * len(chunk))})"
            found += conn.execute(sql, chunk).fetchall()
        return found

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
