"""The provide list in memory, as a Bloom filter: a GET_PROVIDERS for a key the node
does not provide itself (almost every one) asks whether it does without a statement.

``may_contain`` False means the key is not in ``provided_keys``; True means "ask SQL"
(a false positive, 0.1 %, or a key removed since, costs that one query). Other
processes write the list (``dhtstore provide add`` beside a running node), so the
filter follows the table: every REFRESH_INTERVAL one statement reads the rows whose id
is above the last one seen. That sees every key another process committed, because
on SQLite (revision 0005, AUTOINCREMENT) an id is never handed out twice and the one
writer at a time commits its ids in order: whatever commits after a read has ids
above all the read saw. So a key another process added is answered as provided
within REFRESH_INTERVAL plus one read, and never missed after that; the keys of this
process's own ``add`` are in the filter before their transaction starts.

On PostgreSQL concurrent transactions commit sequence values out of order (a smaller
id can become visible after a larger one was read), so the table cannot be followed by
id. There the keys other processes add come from a ``data.keyfeed`` (revision 0008's
notifications) instead of reads: the scan starts only once the feed listens, and the
filter is trusted only while the feed is current, so a key another process added more
than a second ago is never missed; each time the feed (re)starts listening the filter
is built again.

Until the first scan has finished, after a failed read, and during a rebuild (when
more keys were added than it was sized for), every key is "maybe": no false negative
ever, only queries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.bloom import BloomFilter
from ..data.failures import DATABASE_ERRORS, first_line
from ..data.fastread import Reader
from ..data.keyfeed import PostgresKeyFeed
from ..data.models import ProvidedKeyRow

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 0.25  # seconds between reads of the new rows: another process's key is seen within it
MIN_CAPACITY = 16_384  # keys a filter is sized for at least
HEADROOM = 2  # a build is sized for this many times the keys it found
SCAN_BATCH = 2_000  # rows per read
RETRY_DELAY = 2.0  # seconds before a failed read is retried (meanwhile: every key "maybe")

_COUNT = select(func.count()).select_from(ProvidedKeyRow)
_ROWS_AFTER = (
    select(ProvidedKeyRow.id, ProvidedKeyRow.multihash)
    .where(ProvidedKeyRow.id > bindparam("after"))
    .order_by(ProvidedKeyRow.id)
    .limit(bindparam("n"))
)


class ProvideListFilter:
    """See the module docstring. ``run`` builds the filter and follows the table until
    cancelled; ``ProvideListStore(..., list_filter=)`` asks it first."""

    def __init__(self, engine: AsyncEngine, reader: Reader | None = None, feed: PostgresKeyFeed | None = None):
        self._engine = engine
        self._reader = reader  # the follow-up reads, when there is one: cheaper than the engine
        self._feed = feed  # PostgreSQL: other processes' keys, instead of the follow-up reads
        self._rebuild = anyio.Event()  # feed: set when the filter is full or the feed listens anew
        self._current: BloomFilter | None = None  # answers; None: every key "maybe"
        self._building: BloomFilter | None = None  # receives this process's keys during a scan
        self._last_id = 0  # the largest id read into ``_current``
        self.builds = 0
        self.refreshes = 0

    @property
    def ready(self) -> bool:
        """Whether it answers misses (built, and its feed current if it has one)."""
        return self._current is not None and (self._feed is None or self._feed.current)

    def may_contain(self, multihash: bytes) -> bool:
        current = self._current
        return current is None or (self._feed is not None and not self._feed.current) or multihash in current

    def add(self, multihashes: list[bytes]) -> None:
        """Keys this process is adding (call before their transaction starts), or that
        another process committed (from the feed)."""
        for f in (self._current, self._building):
            if f is not None:
                for mh in multihashes:
                    f.add(mh)
        if self._current is not None and self._current.added > self._current.capacity:
            self._rebuild.set()

    def _listened(self) -> None:
        self._current = None  # keys may have been committed while the feed was lost
        self._rebuild.set()

    async def run(self) -> None:
        if self._feed is None:
            await self._retrying(self._build_and_follow)
            return
        await self._feed.run_beside(self.add, self._listened, lambda: self._retrying(self._build_and_wait))

    async def _retrying(self, build: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await build()
            except DATABASE_ERRORS as exc:
                self._current = None  # a row may have been committed that we cannot read
                log.warning("provide list filter: store read failed, every key asks SQL: %s", first_line(exc))
                await anyio.sleep(RETRY_DELAY)

    async def _build_and_wait(self) -> None:
        """With a feed: scan, then let the feed keep the filter until it is full or listens anew."""
        assert self._feed is not None
        listens = self._feed.listens
        self._rebuild = anyio.Event()
        new = await self._scan()
        if self._feed.listens == listens:  # else the feed was lost during the scan: again
            self._current = new
            self.builds += 1
            await self._rebuild.wait()

    async def _scan(self) -> BloomFilter:
        """A new filter of the whole list; this process's keys (and the feed's) go into it
        during the scan too. Every key is "maybe" meanwhile: the old filter is not kept."""
        self._current = None
        with anyio.CancelScope(shield=True):  # an aiosqlite statement cut half-way can hang the exit (``store_call``)
            async with self._engine.connect() as conn:
                count = (await conn.execute(_COUNT)).scalar_one()
        new = self._building = BloomFilter(max(MIN_CAPACITY, HEADROOM * count))
        try:
            self._last_id = await self._read_new(new, 0)
        finally:
            self._building = None
        return new

    async def _build_and_follow(self) -> None:
        new = self._current = await self._scan()
        self.builds += 1
        while new.added <= new.capacity:
            await anyio.sleep(REFRESH_INTERVAL)
            self._last_id = await self._read_new(new, self._last_id)
            self.refreshes += 1
        # More distinct keys than the filter was sized for: rebuild, larger.

    async def _read_new(self, into: BloomFilter, after: int) -> int:
        """Add every row with an id above ``after`` to ``into``; the largest id read."""
        while True:
            rows = await self._fetch(after)
            for _, mh in rows:
                into.add(bytes(mh))
            if rows:
                after = rows[-1][0]
            if len(rows) < SCAN_BATCH:
                return after
            await anyio.lowlevel.checkpoint()

    async def _fetch(self, after: int) -> list[tuple[Any, ...]]:
        if self._reader is not None:
            return await self._reader.fetch(_ROWS_AFTER, after=after, n=SCAN_BATCH)
        with anyio.CancelScope(shield=True):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(_ROWS_AFTER, {"after": after, "n": SCAN_BATCH})).all()
        return [tuple(r) for r in rows]
