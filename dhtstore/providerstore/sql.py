"""The SQL ProviderStore: provider records in the data tier's ``provider_records``
table (the providers' addresses in ``peers``), on SQLite or PostgreSQL.

It is composed of:

- ``groupcommit``: ``add_provider`` queues its record and waits; one writer commits
  everything queued in one transaction, through the dialect's write path
  (``sqlitewrite``, ``postgreswrite``), then wakes the callers;
- ``caches``: provider sets per key and addresses per provider, holding only
  committed data;
- ``expiry``: a background sweep of expired records (reads skip them already);
- ``health``: ``available``, False from a failed operation until the store answers;
- ``quotas``: providers per key, records per provider and in total (``ProviderQuotas``),
  counted without a COUNT per announcement;
- ``keyfilter``: a Bloom filter of the stored keys, so a lookup of a key with no record
  (most GET_PROVIDERS) is answered without a query: kept exact by the writer on a store
  with a single writer process (not ``shared``), and on a shared PostgreSQL store by
  ``data.keyfeed``, the keys every process commits as PostgreSQL notifications.

Shared stores. Several processes (``dhtstore run --identity …``) may share one
PostgreSQL store: then a cached provider set or address list is used for at most
``shared_cache_ttl`` seconds, so a record another process received is served here
within that time (a TTL for the sets, which change with every announcement; only a
key's first record is a notification, for the key filter), and the sweep runs in one
process at a time. A
SQLite store has a single writer process, and keeps its caches until they are evicted.

Outages. A failed batch is retried before its callers fail (``groupcommit``); while
the store is down, reads answer from the caches what they can (a shared store's stale
sets too). What cannot be answered raises StoreUnavailable.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from cachetools import LRUCache
from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..amino import PROVIDER_GC_INTERVAL
from ..data.addrs import unpack_addrs
from ..data.dialects import is_postgresql
from ..data.engine import OPEN_ERRORS
from ..data.failures import DATABASE_ERRORS, first_line, unavailable
from ..data.fastread import Reader
from ..data.models import PeerRow, ProviderRecordRow
from ..data.schema import open_store
from ..data.stats import EXPIRING_WINDOW
from ..errors import StoreError, StoreUnavailable
from ..peerid import PeerId
from .api import Announcement, ProviderQuotas, ProviderRecord, ProviderStoreStats, QuotaExceeded
from .caches import ProviderCaches, Providers
from .expiry import ExpirySweep
from .groupcommit import RETRY_DELAYS, GroupCommit, WritePath
from .health import StoreHealth
from ..data.keyfeed import PROVIDER_KEYS, PostgresKeyFeed
from .keyfilter import KeyFilter
from .peerrows import PeerRows
from .postgreswrite import PostgresWritePath
from .quotas import QuotaCounts
from .sqlitewrite import SqliteWritePath
from .validation import (
    base58btc,
    check_addrs,
    check_key,
    check_provider,
    check_ttl,
    make_record,
)

SHARED_CACHE_TTL = 1.0  # seconds a cached entry may hide another process's write

# A key's live providers with their addresses: built once, not per read (building a
# statement and its cache key is a large share of a cold read's CPU).
_PROVIDERS_OF_KEY = (
    select(ProviderRecordRow.peer_id, ProviderRecordRow.received_at, ProviderRecordRow.expires_at, PeerRow.addrs, PeerRow.addrs_expire_at)
    .outerjoin(PeerRow, PeerRow.peer_id == ProviderRecordRow.peer_id)
    .where(ProviderRecordRow.key_mh == bindparam("key"), ProviderRecordRow.expires_at > bindparam("now"))
)


class SqlProviderStore:
    """ProviderStore over the SQL data tier. Use as ``async with SqlProviderStore(engine)``:
    entering starts the writer, the sweep and the health probe in the store's own task
    group; leaving commits what is queued, then stops them. The engine stays the caller's.

    ``shared``: other processes may write the store (default: True on PostgreSQL); then
    no key filter is kept, and a miss is always a query.
    ``retry_delays``: seconds before each retry of a failed batch (default: RETRY_DELAYS on
    PostgreSQL; none on SQLite, a local file whose errors are not lost connections and
    whose busy timeout already waits for other writers).
    ``reader``: reads a key's providers without SQLAlchemy's asyncio layer
    (``data.fastread``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 256,
        addr_cache_size: int = 8192,
        max_batch: int = 2048,
        sweep_interval: timedelta = PROVIDER_GC_INTERVAL,
        sweep_batch: int = 1000,
        shared: bool | None = None,
        shared_cache_ttl: float = SHARED_CACHE_TTL,
        retry_delays: tuple[float, ...] | None = None,
        reader: Reader | None = None,
        quotas: ProviderQuotas = ProviderQuotas(),
    ):
        self._engine = engine
        self._reader = reader
        self._clock = clock
        postgresql = is_postgresql(engine)
        self.shared = postgresql if shared is None else shared
        self.counters = {
            "records_written": 0, "transactions": 0, "write_errors": 0, "rejected": 0, "swept": 0,
            "write_retries": 0, "read_errors": 0, "store_down": 0, "sweeps_skipped": 0, "stale_reads": 0,
            "key_filter_builds": 0, "key_feed_losses": 0, "filtered_misses": 0, "cache_hits": 0,
            "quota_refused_key": 0, "quota_refused_provider": 0, "quota_refused_total": 0,
        }
        self._health = StoreHealth(engine, self.counters)
        self._caches = ProviderCaches(cache_size, addr_cache_size, shared_cache_ttl if self.shared else None)
        peer_rows = PeerRows(addr_cache_size)
        path: WritePath = PostgresWritePath(engine, peer_rows) if postgresql else SqliteWritePath(engine, peer_rows)
        if retry_delays is None:
            retry_delays = RETRY_DELAYS if postgresql else ()
        self._key_filter: KeyFilter | None = None
        if not self.shared:
            self._key_filter = KeyFilter(engine, self.counters)
        elif postgresql:  # other processes' keys come from revision 0008's notifications
            self._key_filter = KeyFilter(engine, self.counters, PostgresKeyFeed(engine.url, PROVIDER_KEYS, self.counters))
        self.quotas = QuotaCounts(engine, quotas, self.counters)
        self._writes = GroupCommit(
            path, self._caches, self._health, self.counters,
            max_batch=max_batch, retry_delays=retry_delays, key_filter=self._key_filter, quotas=self.quotas,
        )
        self._expiry = ExpirySweep(
            engine, clock, self._caches, self._health, self.counters,
            interval=sweep_interval.total_seconds(), batch=sweep_batch, quotas=self.quotas,
        )
        self._peer_text: LRUCache[bytes, str] = LRUCache(addr_cache_size)  # validated peer id -> base58
        self._task_group: TaskGroup | None = None

    @property
    def available(self) -> bool:
        """False from a failed store operation until the store answers again."""
        return self._health.available

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> SqlProviderStore:
        if self._task_group is not None:
            raise RuntimeError("provider store already started")
        try:
            await self.quotas.recount(int(self._clock()))
        except OPEN_ERRORS as exc:  # the store may be down: the next sweep recounts
            self._health.failed(exc)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._writes.run)
        self._task_group.start_soon(self._expiry.run)
        self._task_group.start_soon(self._health.run)
        if self._key_filter is not None:
            self._task_group.start_soon(self._key_filter.run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        await self._writes.close()  # queued records are committed (or failed) first
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    # -- writes -------------------------------------------------------------------

    async def add_provider(
        self, key: bytes, provider: PeerId, addrs: tuple[bytes, ...] = (), *, ttl: timedelta | None = None
    ) -> None:
        (refused,) = await self.add_providers([(key, provider, addrs)], ttl=ttl)
        if refused is not None:
            raise refused

    async def add_providers(self, records: Sequence[Announcement], *, ttl: timedelta | None = None) -> list[QuotaExceeded | None]:
        try:
            lifetime = check_ttl(ttl)
            queued = [(check_key(key), *self._checked_peer(provider), check_addrs(addrs)) for key, provider, addrs in records]
        except ValueError:
            self.counters["rejected"] += 1
            raise
        if self._task_group is None or self._writes.closing:
            raise StoreError("provider store is not running (use it inside `async with`)")
        return await self._writes.add(queued, int(self._clock()), lifetime)

    def _checked_peer(self, provider: PeerId) -> tuple[bytes, str]:
        """check_provider, and the peer id's text, remembered: a server sees the same
        providers over and over."""
        raw = provider.to_bytes() if isinstance(provider, PeerId) else None
        text = self._peer_text.get(raw) if raw is not None else None
        if raw is None or text is None:
            raw = check_provider(provider)
            text = self._peer_text[raw] = base58btc(raw)
        return raw, text

    # -- reads --------------------------------------------------------------------

    async def get_providers(self, key: bytes, limit: int | None = None) -> list[ProviderRecord]:
        key = check_key(key)
        if self._key_filter is not None and not self._key_filter.may_contain(key):
            self.counters["filtered_misses"] += 1
            return []
        now = int(self._clock())
        providers = await self._provider_set(key)
        live = [(peer, r, e) for peer, (r, e) in providers.items() if e > now]
        random.shuffle(live)  # as go does: spread load over providers, not peer-id order
        if limit is not None:
            live = live[: max(limit, 0)]
        addrs = await self._live_addrs([peer for peer, _, _ in live], now)
        return [make_record(key, peer, r, e, addrs.get(peer, ())) for peer, r, e in live]

    async def _provider_set(self, key: bytes) -> Providers:
        """The key's providers, from the cache or else (with their addresses) from one query."""
        providers = self._caches.fresh_set(key)
        if providers is not None:
            self.counters["cache_hits"] += 1
            return providers
        stale = self._caches.any_set(key)
        mark = self._caches.mark()
        now = int(self._clock())
        rows: Sequence[tuple[Any, ...]]
        try:
            if self._reader is not None:
                rows = await self._reader.fetch(_PROVIDERS_OF_KEY, key=key, now=now)
            else:
                async with self._engine.connect() as conn:
                    rows = (await conn.execute(_PROVIDERS_OF_KEY, {"key": key, "now": now})).all()
        except DATABASE_ERRORS as exc:
            self.counters["read_errors"] += 1
            self._health.failed(exc)
            if stale is not None:  # the best answer while the store is down
                self.counters["stale_reads"] += 1
                return stale
            raise StoreUnavailable(f"provider store unavailable: {first_line(exc)}") from exc
        self._health.answered()
        providers = {bytes(peer): (received, expires) for peer, received, expires, _, _ in rows}
        addrs = [(bytes(peer), bytes(blob), expire_at) for peer, _, _, blob, expire_at in rows if blob is not None]
        self._caches.fill_set(mark, key, providers, addrs)
        return providers

    async def _live_addrs(self, peers: list[bytes], now: int) -> dict[bytes, tuple[bytes, ...]]:
        found, missing = self._caches.known_addrs(peers, now)
        if not missing:
            return found
        mark = self._caches.mark()
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(
                    select(PeerRow.peer_id, PeerRow.addrs, PeerRow.addrs_expire_at).where(PeerRow.peer_id.in_(missing))
                )).all()
        except OPEN_ERRORS as exc:  # the providers are known; only some addresses are not
            self.counters["read_errors"] += 1
            self._health.failed(exc)
            return found
        entries = [(bytes(peer), (unpack_addrs(bytes(blob)), expire_at)) for peer, blob, expire_at in rows]
        self._caches.fill_addrs(mark, entries)
        for peer, (addrs, expire_at) in entries:
            if expire_at > now:
                found[peer] = addrs
        return found

    # -- expiry and counts --------------------------------------------------------

    async def sweep_expired(self) -> int:
        """Delete expired records, ``sweep_batch`` per transaction, so writers never wait
        long; on a shared store, 0 while another process is sweeping (``expiry``)."""
        return await self._expiry.sweep_expired()

    async def stats(self) -> ProviderStoreStats:
        now = int(self._clock())
        r = ProviderRecordRow
        query = select(
            func.count(),
            func.count(func.distinct(r.key_mh)),
            func.count(func.distinct(r.peer_id)),
            func.count().filter(r.expires_at <= now + EXPIRING_WINDOW),
        ).where(r.expires_at > now)
        with unavailable("provider store", self._health.failed):
            async with self._engine.connect() as conn:
                records, keys, providers, expiring = (await conn.execute(query)).one()
        return ProviderStoreStats(records, keys, providers, expiring)


@asynccontextmanager
async def open_provider_store(url: str, **options: Any) -> AsyncIterator[SqlProviderStore]:
    """A running SqlProviderStore on the store at ``url`` (checked to be at the code's
    schema revision), with its own engine, disposed on exit."""
    engine = await open_store(url)
    try:
        async with SqlProviderStore(engine, **options) as store:
            yield store
    finally:
        await engine.dispose()


__all__ = ["SqlProviderStore", "open_provider_store"]
