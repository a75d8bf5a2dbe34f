"""Whether the provider store's database answers: ``available``, kept current by the
store's own operations and by a probe that runs even when nobody uses the store."""

from __future__ import annotations

import logging
import sqlite3

import anyio
from sqlalchemy import text
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    NotSupportedError,
    ProgrammingError,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.engine import OPEN_ERRORS
from ..data.failures import first_line

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0  # seconds between checks of a store that is down
HEALTH_INTERVAL = 5.0  # seconds between checks of a store that is up (an idle node notices an outage too)
PROBE_TIMEOUT = 5.0  # seconds a check may take before the store counts as down

# The database answered and refused the statement: the store is up, and retrying cannot help.
# (SQLAlchemy's, and sqlite3's from the plain write path, ``sqlitewrite``.)
NOT_TRANSIENT: tuple[type[BaseException], ...] = (
    IntegrityError, DataError, ProgrammingError, NotSupportedError,
    sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.NotSupportedError,
)
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*OPEN_ERRORS, TimeoutError)


class StoreHealth:
    """``available`` is False from a failed store operation until the store answers again."""

    def __init__(self, engine: AsyncEngine, counters: dict[str, int]):
        self._engine = engine
        self._counters = counters  # counts "store_down": each time the store went away
        self.available = True
        self._down = anyio.Event()

    def failed(self, exc: BaseException) -> None:
        """A store operation failed with ``exc``."""
        if isinstance(exc, NOT_TRANSIENT):
            return  # the store answered; the statement was wrong
        if self.available:
            self.available = False
            self._counters["store_down"] += 1
            self._down.set()
            log.warning("provider store: store unavailable (%s); answering from cache until it is back", first_line(exc))

    def answered(self) -> None:
        """A store operation succeeded."""
        if not self.available:
            self.available = True
            self._down = anyio.Event()
            log.warning("provider store: store available again")

    async def run(self) -> None:
        """Check the store every HEALTH_INTERVAL, and every PROBE_INTERVAL once it is
        down, so ``available`` follows it even when no caller is using the store."""
        while True:
            if self.available:
                with anyio.move_on_after(HEALTH_INTERVAL):
                    await self._down.wait()  # a failed operation: start probing now
            if not self.available:
                await anyio.sleep(PROBE_INTERVAL)
            try:
                with anyio.fail_after(PROBE_TIMEOUT):
                    async with self._engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
            except _PROBE_ERRORS as exc:
                self.failed(exc)
                continue
            self.answered()
