"""An in-memory ValueStore: the simulation's, and the reference for the SQL one.

Same policy as go-libp2p-kad-dht ``records/value_store.go``: the incoming record
replaces the stored one unless ``select`` prefers the stored one; a stored record
that no longer validates (an IPNS record past its EOL) does not block a new one;
``get`` hides, and drops, a record received more than MAX_RECORD_AGE ago.
"""

from __future__ import annotations

import time
from datetime import timedelta

from ..amino import MAX_RECORD_AGE
from ..types import Record
from . import timestamps
from .api import RecordError, Validator
from .validators import Clock


class MemoryValueStore:
    def __init__(self, validator: Validator, clock: Clock = time.time, max_record_age: timedelta = MAX_RECORD_AGE):
        self._validator = validator
        self._clock = clock
        self._max_age_ns = int(max_record_age.total_seconds()) * timestamps.NS_PER_SECOND
        self._records: dict[bytes, Record] = {}

    async def get(self, key: bytes) -> Record | None:
        record = self._records.get(key)
        if record is not None and self._too_old(record):
            del self._records[key]
            return None
        return record

    async def put(self, record: Record) -> Record:
        existing = await self.get(record.key)
        if existing is not None and self._still_valid(existing):
            if self._validator.select(record.key, [record.value, existing.value]) != 0:
                return existing
        stored = Record(record.key, record.value, timestamps.format_ns(self._now_ns()))
        self._records[record.key] = stored
        return stored

    async def count(self) -> int:
        """Records held, including any past MAX_RECORD_AGE that ``sweep`` has not removed yet."""
        return len(self._records)

    async def sweep(self) -> int:
        """Delete every record older than MAX_RECORD_AGE; return how many went."""
        old = [key for key, record in self._records.items() if self._too_old(record)]
        for key in old:
            del self._records[key]
        return len(old)

    def _now_ns(self) -> int:
        return int(self._clock() * timestamps.NS_PER_SECOND)

    def _too_old(self, record: Record) -> bool:
        try:
            received = timestamps.parse_ns(record.time_received)
        except timestamps.TimestampError:
            return True
        return self._now_ns() - received > self._max_age_ns

    def _still_valid(self, record: Record) -> bool:
        try:
            self._validator.validate(record.key, record.value)
        except RecordError:
            return False
        return True
