"""The SQL ValueStore, on the data tier's ``value_records`` table (SQLite or PostgreSQL).

The policy is the in-memory store's (``records.memory``): ``select`` decides on
write, a stored record that no longer validates does not block a new one, and a
record received more than MAX_RECORD_AGE ago is hidden and dropped.

Concurrent writers, in one process or several sharing a PostgreSQL store, are
serialised per key by the database: a write first tries ``INSERT … ON CONFLICT DO
NOTHING`` (which on SQLite takes the write lock), and when the key exists, reads the
stored row ``FOR UPDATE`` before comparing and updating it in the same transaction.
"""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..amino import MAX_RECORD_AGE
from ..data.dialects import dialect_insert
from ..data.failures import unavailable
from ..data.models import ValueRecordRow as _V
from ..types import Record
from . import timestamps
from .api import RecordError, Validator, key_text
from .validators import Clock


class SqlValueStore:
    """Value records in SQL. ``engine`` comes from ``data.open_store``; the caller disposes of it."""

    def __init__(
        self,
        engine: AsyncEngine,
        validator: Validator,
        clock: Clock = time.time,
        max_record_age: timedelta = MAX_RECORD_AGE,
    ):
        self._engine = engine
        self._validator = validator
        self._clock = clock
        self._max_age = int(max_record_age.total_seconds())
        self._insert = dialect_insert(engine)

    def _now(self) -> int:
        return int(self._clock())

    def _to_record(self, key: bytes, value: bytes, received_at: int) -> Record:
        return Record(key, value, timestamps.format_ns(received_at * timestamps.NS_PER_SECOND))

    async def get(self, key: bytes) -> Record | None:
        with unavailable("value store"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(select(_V.value, _V.received_at).where(_V.record_key == key))).first()
            if row is None:
                return None
            if self._now() - row.received_at > self._max_age:
                async with self._engine.begin() as conn:  # drop it unless a put replaced it meanwhile
                    await conn.execute(delete(_V).where(_V.record_key == key, _V.received_at == row.received_at))
                return None
        return self._to_record(key, row.value, row.received_at)

    async def put(self, record: Record) -> Record:
        with unavailable("value store"):
            return await self._put(record)

    async def _put(self, record: Record) -> Record:
        now = self._now()
        stored = self._to_record(record.key, record.value, now)
        async with self._engine.begin() as conn:
            inserted = await conn.execute(
                self._insert(_V)
                .values(record_key=record.key, record_key_text=key_text(record.key), value=record.value, received_at=now)
                .on_conflict_do_nothing(index_elements=[_V.record_key])
            )
            if inserted.rowcount == 1:
                return stored
            existing = await self._locked_existing(conn, record.key, now)
            if existing is not None and self._validator.select(record.key, [record.value, existing.value]) != 0:
                return existing
            await conn.execute(
                update(_V).where(_V.record_key == record.key).values(value=record.value, received_at=now)
            )
        return stored

    async def _locked_existing(self, conn: AsyncConnection, key: bytes, now: int) -> Record | None:
        """The stored record, locked until commit; None if it is too old or no longer valid."""
        row = (
            await conn.execute(
                select(_V.value, _V.received_at).where(_V.record_key == key).with_for_update()
            )
        ).first()
        if row is None or now - row.received_at > self._max_age:
            return None
        try:
            self._validator.validate(key, row.value)
        except RecordError:
            return None
        return self._to_record(key, row.value, row.received_at)

    async def count(self) -> int:
        """Records held, including any past MAX_RECORD_AGE that ``sweep`` has not removed yet."""
        with unavailable("value store"):
            async with self._engine.connect() as conn:
                return int((await conn.execute(select(func.count()).select_from(_V))).scalar_one())

    async def sweep(self) -> int:
        """Delete every record older than MAX_RECORD_AGE; return how many went."""
        with unavailable("value store"):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(_V).where(_V.received_at < self._now() - self._max_age))
        return int(result.rowcount)
