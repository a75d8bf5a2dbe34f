"""Copy a whole store to another (SQLite ⇄ PostgreSQL), in batches, and prove the copy.

- The target is migrated to the code's revision first (created if need be); a source
  or target at another revision is refused by the data tier's revision guard.
- Every table is read in primary-key order, one batch at a time (keyset pagination),
  so memory stays flat whatever the size; each batch is one transaction on the target,
  written with ``ON CONFLICT DO NOTHING``.
- A target that already holds data is refused unless ``merge`` is set (then rows
  whose key the target already has are left as the target has them). While a copy
  runs, a marker row in ``provider_state`` names its source: a copy interrupted by a
  crash or Ctrl-C is resumed by running the same command again, without duplicates.
- At the end each table's row count and checksum (an order-independent sum of
  SHA-256 row digests, so SQLite's and PostgreSQL's collations do not matter) are
  compared between source and target.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import anyio
from alembic.util import CommandError
from sqlalchemy import Table, delete, func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import StoreError
from .dialects import dialect_insert
from .engine import OPEN_ERRORS, parse_store_url, redact
from .models import ProviderStateRow, metadata
from .schema import create_or_upgrade, open_store

DEFAULT_BATCH_SIZE = 5000
COPY_MARKER = "dhtstore.db_copy.unfinished"  # provider_state row present while a copy runs
_STATE = cast(Table, ProviderStateRow.__table__)  # declared as a FromClause; it is a Table
_MOD = 2**256


class CopyError(StoreError):
    """The copy was refused, or the copy does not match its source."""


class Progress(Protocol):
    def start(self, total_rows: int) -> None: ...

    def advance(self, rows: int) -> None: ...


@dataclass(frozen=True, slots=True)
class TableReport:
    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def matches(self) -> bool:
        return self.source_rows == self.target_rows and self.source_checksum == self.target_checksum


@dataclass(frozen=True, slots=True)
class CopyReport:
    tables: tuple[TableReport, ...]
    merged: bool
    resumed: bool

    @property
    def rows(self) -> int:
        return sum(t.source_rows for t in self.tables)

    @property
    def matches(self) -> bool:
        return all(t.matches for t in self.tables)


async def copy_store(
    source_url: str,
    target_url: str,
    *,
    merge: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every table of ``source_url`` into ``target_url`` and compare them.

    Raises CopyError when refused or when a table differs (unless ``merge``, where
    the target legitimately holds more), StoreError when a store cannot be used.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if parse_store_url(source_url) == parse_store_url(target_url):
        raise CopyError("source and target are the same store")
    source = await open_store(source_url)
    try:
        target = await _open_migrated(target_url)
        try:
            return await _copy(source, target, redact(source_url), merge, batch_size, progress)
        except OPEN_ERRORS as exc:  # a store went away mid-copy: running the command again resumes
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise StoreError(f"copy interrupted: {cause[0] if cause else type(exc).__name__}") from None
        finally:
            await target.dispose()
    finally:
        await source.dispose()


async def _open_migrated(url: str) -> AsyncEngine:
    """Create the target or migrate it up to the code's revision; one that is newer is refused."""
    try:
        await create_or_upgrade(url)
    except CommandError:
        pass  # at a revision this code does not know: open_store below says which
    return await open_store(url)


async def _copy(
    source: AsyncEngine, target: AsyncEngine, source_name: str, merge: bool, batch_size: int, progress: Progress | None
) -> CopyReport:
    # Parents before children (foreign keys); derived tables (counters) are the target's triggers' to fill.
    tables = [t for t in metadata.sorted_tables if not t.info.get("derived")]
    marker = json.dumps({"source": source_name})
    async with source.connect() as conn:
        if (await conn.execute(select(_STATE.c.value).where(_STATE.c.name == COPY_MARKER))).first() is not None:
            raise CopyError("the source is itself the target of an unfinished copy: finish that copy first")
    async with target.connect() as conn:
        previous = (await conn.execute(select(_STATE.c.value).where(_STATE.c.name == COPY_MARKER))).scalar()
        has_data = await _has_rows(conn, tables, ignoring_marker=True)
    resumed = previous == marker
    if has_data and not (merge or resumed):
        raise CopyError(
            "the target store already holds data: copy into an empty store, or pass --merge "
            "to add the source's rows to it (rows the target has are kept as they are)"
        )
    async with target.begin() as conn:
        await conn.execute(dialect_insert(target)(_STATE).values(name=COPY_MARKER, value=marker, updated_at=0).on_conflict_do_nothing())
        await conn.execute(_STATE.update().where(_STATE.c.name == COPY_MARKER).values(value=marker))

    async with source.connect() as conn:
        counts = {t.name: await _count(conn, t) for t in tables}
    if progress is not None:
        progress.start(sum(counts.values()))

    source_sums = {table.name: await _copy_table(source, target, table, batch_size, progress) for table in tables}

    async with target.begin() as conn:
        if target.dialect.name == "postgresql":
            await _reset_sequences(conn, tables)
        await conn.execute(delete(_STATE).where(_STATE.c.name == COPY_MARKER))

    reports = []
    for table in tables:
        target_rows, target_sum = await _table_sum(target, table, batch_size)
        source_rows, source_sum = source_sums[table.name]
        reports.append(TableReport(table.name, source_rows, target_rows, f"{source_sum:064x}", f"{target_sum:064x}"))
    report = CopyReport(tuple(reports), merged=merge and has_data and not resumed, resumed=resumed)
    if not report.merged and not report.matches:
        bad = ", ".join(f"{t.table} ({t.source_rows} → {t.target_rows} rows)" for t in report.tables if not t.matches)
        raise CopyError(f"the copy differs from its source in: {bad}")
    return report


async def _copy_table(
    source: AsyncEngine, target: AsyncEngine, table: Table, batch_size: int, progress: Progress | None
) -> tuple[int, int]:
    """Copy one table; return its source row count and checksum.

    The next batch is read while the previous one is written (a queue of one batch,
    so at most three are in memory), which keeps both databases busy.
    """
    send, receive = anyio.create_memory_object_stream[Sequence[Any]](1)

    async def read() -> None:
        async with send:
            async for batch in _batches(source, table, batch_size):
                try:
                    await send.send(batch)
                except anyio.BrokenResourceError:
                    return  # the writer stopped on an error of its own, which is the one reported

    rows, checksum = 0, 0
    insert = dialect_insert(target)(table).on_conflict_do_nothing()
    columns = table.c.keys()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            async with receive:
                async for batch in receive:
                    async with target.begin() as conn:
                        await conn.execute(insert, [dict(zip(columns, r)) for r in batch])
                    checksum = (checksum + sum(_row_digest(r) for r in batch)) % _MOD
                    rows += len(batch)
                    if progress is not None:
                        progress.advance(len(batch))
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # the one failure, as the caller would see it without the reader task
            raise group.exceptions[0] from None
        raise
    return rows, checksum


async def _has_rows(conn: AsyncConnection, tables: Sequence[Table], *, ignoring_marker: bool) -> bool:
    for table in tables:
        query = select(table.c[table.primary_key.columns.keys()[0]]).limit(1)
        if ignoring_marker and table is _STATE:
            query = query.where(_STATE.c.name != COPY_MARKER)
        if (await conn.execute(query)).first() is not None:
            return True
    return False


async def _count(conn: AsyncConnection, table: Table) -> int:
    return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def _batches(engine: AsyncEngine, table: Table, batch_size: int) -> AsyncIterator[Sequence[Any]]:
    """All rows of ``table`` in primary-key order, ``batch_size`` at a time, one query each."""
    key = list(table.primary_key.columns)
    position = [table.c.keys().index(c.key) for c in key]
    last: tuple[Any, ...] | None = None
    while True:
        query = select(table).order_by(*key).limit(batch_size)
        if last is not None:
            query = query.where(tuple_(*key) > tuple_(*last) if len(key) > 1 else key[0] > last[0])
        async with engine.connect() as conn:
            batch = (await conn.execute(query)).all()
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        last = tuple(batch[-1][i] for i in position)


async def _table_sum(engine: AsyncEngine, table: Table, batch_size: int) -> tuple[int, int]:
    rows, checksum = 0, 0
    async for batch in _batches(engine, table, batch_size):
        rows += len(batch)
        checksum = (checksum + sum(_row_digest(r) for r in batch)) % _MOD
    return rows, checksum


def _row_digest(row: Sequence[Any]) -> int:
    """SHA-256 of a row's values. ``repr`` of the tuple is injective over the column
    types here (int, str, bytes, None) and both drivers return the same Python types."""
    return int.from_bytes(hashlib.sha256(repr(tuple(row)).encode()).digest(), "big")


async def _reset_sequences(conn: AsyncConnection, tables: Sequence[Table]) -> None:
    """After explicit ids were copied, move each serial column's sequence past them."""
    for table in tables:
        column = table.autoincrement_column
        if column is None:
            continue
        await conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
            )
        )
