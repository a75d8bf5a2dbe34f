"""A negative filter of the keys in ``provider_records``: a GET_PROVIDERS for a key the
store holds no record of (most of them on the public DHT) is answered without a query.

A Bloom filter (salted BLAKE2b, double hashing) sized for twice the keys at its build,
at a false-positive rate of FP_RATE (0.1 %): 14.4 bits a key of capacity, so 3.6 MB
for a store of 1M keys and 36 MB for 10M. ``may_contain`` False means no record of the
key exists; True means "ask SQL" (a false positive costs that one query, as does any
expired record not yet swept).

Exact where every write goes through this process (SQLite; ``SqlProviderStore.shared``
False), the assumption its caches make too: the writer ``add``s a batch's keys before
its transaction starts, so a key is in the filter before any reader could see its
record, also when the transaction fails after the commit reached the database. On a
shared PostgreSQL store the keys other processes add come from a ``data.keyfeed``, and the
filter is trusted only while the feed is current (else every key is "maybe"), so a
record another process committed more than a second ago is never filtered out; each
time the feed (re)starts listening the filter is built again, since what was committed
while it was lost is only in the table. A shared SQLite store keeps no filter. Until
the first build from the store has finished, every key is "maybe".

Keys are never removed; when more distinct keys were added than the filter was sized
for, it is rebuilt from the store (expired records swept meanwhile drop out). A build
scans the keys in the background, while the old filter answers and the new one receives
the writer's keys too, then replaces it.
"""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
from sqlalchemy import bindparam, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.bloom import BloomFilter
from ..data.engine import OPEN_ERRORS
from ..data.failures import first_line
from ..data.keyfeed import PostgresKeyFeed
from ..data.models import ProviderRecordRow

log = logging.getLogger(__name__)

MIN_CAPACITY = 65_536  # keys a filter is sized for at least
HEADROOM = 2  # a build is sized for this many times the keys it found
SCAN_BATCH = 2_000  # keys per page of the build's scan: about 11 ms of the event loop's CPU
RETRY_DELAY = 5.0  # seconds before a failed build is retried (meanwhile: every key "maybe")

_COUNT_KEYS = select(func.count(distinct(ProviderRecordRow.key_mh)))
_KEYS_AFTER = (
    select(ProviderRecordRow.key_mh)
    .distinct()
    .where(ProviderRecordRow.key_mh > bindparam("after"))
    .order_by(ProviderRecordRow.key_mh)
    .limit(bindparam("n"))
)


class KeyFilter:
    """The provider store's negative filter (see the module docstring). ``run`` builds
    it, and rebuilds it when it is full, until cancelled."""

    def __init__(self, engine: AsyncEngine, counters: dict[str, int], feed: PostgresKeyFeed | None = None):
        self._engine = engine
        self._counters = counters  # "key_filter_builds"
        self._feed = feed
        self._current: BloomFilter | None = None  # answers; None: not built yet
        self._building: BloomFilter | None = None  # receives the writer's keys during a build
        self._builds_started = 0
        self._full = anyio.Event()  # set: build again (full, or the feed listens anew)

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in (self._current, self._building) if f is not None)

    def may_contain(self, key: bytes) -> bool:
        return self._current is None or (self._feed is not None and not self._feed.current) or key in self._current

    def add(self, keys: list[bytes]) -> tuple[int, list[bytes]]:
        """Keys being written: call before their transaction starts, and give the first
        value it returns to ``added_during`` after the transaction ended (committed or
        not). The second: those of ``keys`` that may have been stored before (as
        ``may_contain`` would have answered; one hash per key for both)."""
        maybe_stored = keys
        if self._current is not None:
            before = {key: self._current.add(key) for key in dict.fromkeys(keys)}  # a batch may repeat a key
            if self._feed is None:  # (shared: another process may have added the key just now)
                maybe_stored = [key for key in keys if before[key]]
        self._received(keys, current=False)
        return self._builds_started, maybe_stored

    def _received(self, keys: list[bytes], current: bool = True) -> None:
        """Keys committed (by another process, from the feed), or being written."""
        if current and self._current is not None:
            for key in keys:
                self._current.add(key)
        if self._building is not None:
            for key in keys:
                self._building.add(key)
        if self._current is not None and self._current.added > self._current.capacity:
            self._full.set()

    def _listened(self) -> None:
        """The feed (re)started listening: build again."""
        self._current = None  # keys may have been committed while the feed was lost
        self._full.set()

    def added_during(self, keys: list[bytes], builds_started: int) -> None:
        """The keys ``add`` took, into a filter whose build began while their
        transaction ran (its scan may have passed them before they were committed);
        that build may have ended already, its filter now the current one."""
        if self._builds_started != builds_started:
            for f in (self._current, self._building):
                if f is not None:
                    for key in keys:
                        f.add(key)

    def _listens(self) -> int:
        return 0 if self._feed is None else self._feed.listens

    async def run(self) -> None:
        if self._feed is None:
            await self._build_when_due()
            return
        await self._feed.run_beside(self._received, self._listened, self._build_when_due)

    async def _build_when_due(self) -> None:
        while True:
            listens = self._listens()
            try:
                await self._build()
            except OPEN_ERRORS as exc:  # the old filter (or none: "maybe") answers meanwhile
                self._building = None
                log.warning("provider store: key filter not built: %s", first_line(exc))
                await anyio.sleep(RETRY_DELAY)
                continue
            if self._listens() != listens:  # the feed was lost during the scan: build again
                self._current = None
                continue
            assert self._current is not None
            if self._current.added <= self._current.capacity:  # else it filled during its build
                self._full = anyio.Event()  # the old filter's overflow is not this one's
                await self._full.wait()

    async def _build(self) -> None:
        # Page by page, each a short statement of its own: no read transaction held for
        # the whole scan (on SQLite it would stall the WAL's checkpoints), and the store
        # can stop between pages. From ``_building`` on, the writer adds its keys to the
        # new filter too (after a transaction that began before the build, as well as
        # before each), so a key committed while the scan runs is in it whether or not a
        # page saw it.
        with anyio.CancelScope(shield=True):
            async with self._engine.connect() as conn:
                count = (await conn.execute(_COUNT_KEYS)).scalar_one()
        new = self._building = BloomFilter(max(MIN_CAPACITY, HEADROOM * count))
        self._builds_started += 1
        after = b""
        while True:
            with anyio.CancelScope(shield=True):
                async with self._engine.connect() as conn:
                    keys = [bytes(k) for k in (await conn.execute(_KEYS_AFTER, {"after": after, "n": SCAN_BATCH})).scalars()]
            for key in keys:
                new.add(key)
            if len(keys) < SCAN_BATCH:
                break
            after = keys[-1]
            await anyio.lowlevel.checkpoint()
        self._current, self._building = new, None
        self._counters["key_filter_builds"] += 1
