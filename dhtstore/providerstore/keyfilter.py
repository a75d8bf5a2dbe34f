"""A negative filter of the keys in ``provider_records``: a GET_PROVIDERS for a key the
store holds no record of (most of them on the public DHT) is answered without a query.

A Bloom filter (salted BLAKE2b, double hashing) sized for twice the keys at its build,
at a false-positive rate of FP_RATE (0.1 %): 14.4 bits a key of capacity, so 3.6 MB
for a store of 1M keys and 36 MB for 10M. ``may_contain`` False means no record of the
key exists; True means "ask SQL" (a false positive costs that one query, as does any
expired record not yet swept).

Exact only where every write goes through this process: a store with one writer
process (SQLite; ``SqlProviderStore.shared`` False), the assumption its caches make too.
A shared store keeps no filter. The writer ``add``s a batch's keys before its
transaction starts, so a key is in the filter before any reader could see its record,
also when the transaction fails after the commit reached the database. Until the first
build from the store has finished, every key is "maybe".

Keys are never removed; when more distinct keys were added than the filter was sized
for, it is rebuilt from the store (expired records swept meanwhile drop out). A build
scans the keys in the background, while the old filter answers and the new one receives
the writer's keys too, then replaces it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets

import anyio
from sqlalchemy import bindparam, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.engine import OPEN_ERRORS
from ..data.failures import first_line
from ..data.models import ProviderRecordRow

log = logging.getLogger(__name__)

FP_RATE = 0.001
MIN_CAPACITY = 65_536  # keys a filter is sized for at least
HEADROOM = 2  # a build is sized for this many times the keys it found
SCAN_BATCH = 2_000  # keys per page of the build's scan: about 11 ms of the event loop's CPU
RETRY_DELAY = 5.0  # seconds before a failed build is retried (meanwhile: every key "maybe")

_COUNT_KEYS = select(func.count(distinct(ProviderRecordRow.key_mh)))
_KEYS_AFTER = (
    select(ProviderRecordRow.key_mh).distinct()
    .where(ProviderRecordRow.key_mh > bindparam("after"))
    .order_by(ProviderRecordRow.key_mh).limit(bindparam("n"))
)


class BloomFilter:
    def __init__(self, capacity: int, fp_rate: float = FP_RATE):
        self.capacity = capacity
        bits = max(64, math.ceil(-capacity * math.log(fp_rate) / math.log(2) ** 2))
        self._m = bits
        self._k = max(1, round(bits / capacity * math.log(2)))
        self._bits = bytearray((bits + 7) // 8)
        self._salt = secrets.token_bytes(16)  # keys are chosen by peers: their bit positions are not
        self.added = 0  # keys added that were not (apparently) present: about the distinct keys

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def _positions(self, key: bytes) -> tuple[int, int]:
        d = hashlib.blake2b(key, digest_size=16, key=self._salt).digest()
        return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") | 1

    def add(self, key: bytes) -> None:
        h1, h2 = self._positions(key)
        bits, m = self._bits, self._m
        new = False
        for i in range(self._k):
            pos = (h1 + i * h2) % m
            byte, mask = pos >> 3, 1 << (pos & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                new = True
        if new:
            self.added += 1

    def __contains__(self, key: bytes) -> bool:
        h1, h2 = self._positions(key)
        bits, m = self._bits, self._m
        for i in range(self._k):
            pos = (h1 + i * h2) % m
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
        return True


class KeyFilter:
    """The provider store's negative filter (see the module docstring). ``run`` builds
    it, and rebuilds it when it is full, until cancelled."""

    def __init__(self, engine: AsyncEngine, counters: dict[str, int]):
        self._engine = engine
        self._counters = counters  # "key_filter_builds"
        self._current: BloomFilter | None = None  # answers; None: not built yet
        self._building: BloomFilter | None = None  # receives the writer's keys during a build
        self._builds_started = 0
        self._full = anyio.Event()

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in (self._current, self._building) if f is not None)

    def may_contain(self, key: bytes) -> bool:
        return self._current is None or key in self._current

    def add(self, keys: list[bytes]) -> int:
        """Keys being written: call before their transaction starts, and give what it
        returns to ``added_during`` after the transaction ended (committed or not)."""
        for f in (self._current, self._building):
            if f is not None:
                for key in keys:
                    f.add(key)
        if self._current is not None and self._current.added > self._current.capacity:
            self._full.set()
        return self._builds_started

    def added_during(self, keys: list[bytes], builds_started: int) -> None:
        """The keys ``add`` took, into a filter whose build began while their
        transaction ran (its scan may have passed them before they were committed);
        that build may have ended already, its filter now the current one."""
        if self._builds_started != builds_started:
            for f in (self._current, self._building):
                if f is not None:
                    for key in keys:
                        f.add(key)

    async def run(self) -> None:
        while True:
            try:
                await self._build()
            except OPEN_ERRORS as exc:  # the old filter (or none: "maybe") answers meanwhile
                self._building = None
                log.warning("provider store: key filter not built: %s", first_line(exc))
                await anyio.sleep(RETRY_DELAY)
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
            await anyio.sleep(0)
        self._current, self._building = new, None
        self._counters["key_filter_builds"] += 1
