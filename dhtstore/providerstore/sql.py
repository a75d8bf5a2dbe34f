"""The SQL ProviderStore: batched durable writes, an LRU of provider sets, an expiry sweep.

Writes. ``add_provider`` validates, queues the record and waits; one writer task takes
everything queued and commits it in one transaction (group commit), then wakes the
callers. A public Amino server receives ~1.5k provider records/s; one transaction per
record is what made go-libp2p-kad-dht write 20 GB in 3 h (kubo#11432, fixed by
batching in go-libp2p-kad-dht#1293). Re-announcing (key, provider) is an upsert
(``ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL alike). On SQLite (WAL,
synchronous=NORMAL) a committed record survives the process being killed; only a
power loss can take the last transactions.

Reads. An LRU (go: 256 keys) holds provider sets; a second one holds provider
addresses. Both only ever hold committed data: the writer updates them after its
commit, and a read that raced a commit touching its key does not fill the cache.

Expiry. Reads filter expired records themselves; a background sweep deletes them in
batches, each in its own short transaction.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

import anyio
import base58
from anyio.abc import TaskGroup
from cachetools import LRUCache
from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from ..amino import PROVIDER_ADDR_TTL, PROVIDER_GC_INTERVAL
from ..data.engine import OPEN_ERRORS, StoreError
from ..data.models import PeerRow, ProviderRecordRow
from ..data.schema import open_store
from ..peerid import PeerId
from .api import ProviderRecord, ProviderStoreStats
from .validation import check_addrs, check_key, check_provider, check_ttl, make_record, pack_addrs, unpack_addrs

log = logging.getLogger(__name__)

HOUR = 3600
RECENT_COMMITS = 64  # commits remembered to tell whether a read raced a write
PEER_REFRESH = 60  # seconds: how stale peers.last_seen_at / addrs_expire_at may get
GATHER_ROUNDS = 8  # event-loop turns a transaction waits for more records to join it


@dataclass(slots=True)
class _Pending:
    """A queued upsert and the callers waiting for it (re-announces coalesce)."""

    key: bytes
    peer: bytes
    addrs: tuple[bytes, ...]
    received_at: int
    expires_at: int
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


@dataclass(slots=True)
class _CachedSet:
    providers: dict[bytes, tuple[int, int]]  # peer -> (received_at, expires_at)


class SqlProviderStore:
    """ProviderStore over the SQL data tier. Use as ``async with SqlProviderStore(engine)``:
    entering starts the writer and the sweep in the store's own task group; leaving
    commits what is queued, then stops them. The engine stays the caller's."""

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
    ):
        self._engine = engine
        self._clock = clock
        self._dialect = engine.dialect.name
        self._sets: LRUCache[bytes, _CachedSet] = LRUCache(cache_size)
        self._addrs: LRUCache[bytes, tuple[tuple[bytes, ...], int]] = LRUCache(addr_cache_size)
        self._addr_ttl = int(PROVIDER_ADDR_TTL.total_seconds())
        self._max_batch = max_batch
        self._peer_text: LRUCache[bytes, str] = LRUCache(addr_cache_size)  # validated peer id -> base58
        # peer -> (addresses, time) of the last ``peers`` row we wrote for it
        self._peer_written: LRUCache[bytes, tuple[tuple[bytes, ...], int]] = LRUCache(addr_cache_size)
        self._upsert_records = self._upsert(ProviderRecordRow, ["key_mh", "peer_id"], ["received_at", "expires_at"])
        self._upsert_peer_addrs = self._upsert(PeerRow, ["peer_id"], ["addrs", "addrs_expire_at", "last_seen_at"])
        self._upsert_peer_seen = self._upsert(PeerRow, ["peer_id"], ["last_seen_at"])
        self._sweep_interval = sweep_interval.total_seconds()
        self._sweep_batch = sweep_batch
        self._pending: dict[tuple[bytes, bytes], _Pending] = {}
        self._wake = anyio.Event()
        self._commits = 0
        self._recent: deque[tuple[int, frozenset[bytes]]] = deque(maxlen=RECENT_COMMITS)
        self._task_group: TaskGroup | None = None
        self._closing = False
        self._writer_stopped = anyio.Event()
        self.counters = {"records_written": 0, "transactions": 0, "write_errors": 0, "swept": 0}

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> SqlProviderStore:
        if self._task_group is not None:
            raise RuntimeError("provider store already started")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._writer)
        self._task_group.start_soon(self._sweeper)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        self._closing = True
        self._wake.set()
        with anyio.CancelScope(shield=True):
            await self._writer_stopped.wait()  # queued records are committed (or failed) first
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    # -- writes -------------------------------------------------------------------

    async def add_provider(
        self, key: bytes, provider: PeerId, addrs: tuple[bytes, ...] = (), *, ttl: timedelta | None = None
    ) -> None:
        key, addrs, lifetime = check_key(key), check_addrs(addrs), check_ttl(ttl)
        peer = self._checked_peer(provider)
        if self._task_group is None or self._closing:
            raise StoreError("provider store is not running (use it inside `async with`)")
        now = int(self._clock())
        pending = self._pending.get((key, peer))
        if pending is None:
            pending = self._pending[(key, peer)] = _Pending(key, peer, addrs, now, now + lifetime)
        else:  # a re-announce while the first is queued: one row, the later times and addresses
            pending.received_at, pending.expires_at = now, now + lifetime
            pending.addrs = addrs or pending.addrs
        self._wake.set()
        await pending.done.wait()
        if pending.error is not None:
            raise StoreError(f"provider record not stored: {pending.error}") from None

    def _checked_peer(self, provider: PeerId) -> bytes:
        """check_provider, remembered: a server sees the same providers over and over."""
        raw = provider.to_bytes() if isinstance(provider, PeerId) else None
        if raw is None or raw not in self._peer_text:
            raw = check_provider(provider)
            self._peer_text[raw] = base58.b58encode(raw).decode()
        return raw

    async def _writer(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await self._gather()
                while self._pending:
                    batch = self._take(self._max_batch)
                    await self._commit(batch)
                if self._closing:
                    return
        finally:
            self._writer_stopped.set()

    async def _gather(self) -> None:
        """Let callers that are ready to run queue their records before this transaction
        starts: yield to the event loop until the queue stops growing (no wall-clock wait,
        so a lone caller is not delayed)."""
        for _ in range(GATHER_ROUNDS):
            before = len(self._pending)
            await anyio.sleep(0)
            if len(self._pending) == before or len(self._pending) >= self._max_batch:
                return

    def _take(self, n: int) -> list[_Pending]:
        keys = list(self._pending)[:n]
        return [self._pending.pop(k) for k in keys]

    async def _commit(self, batch: list[_Pending]) -> None:
        # One order for all writers (us and other processes) so PostgreSQL cannot deadlock.
        batch.sort(key=lambda p: (p.key, p.peer))
        try:
            with anyio.CancelScope(shield=True):  # never leave callers waiting on a half-done batch
                async with self._engine.begin() as conn:
                    peers_written = await self._upsert_peers(conn, batch)
                    await conn.execute(self._upsert_records, [
                        {"key_mh": p.key, "peer_id": p.peer, "key_b58": base58.b58encode(p.key).decode(),
                         "received_at": p.received_at, "expires_at": p.expires_at}
                        for p in batch
                    ])
        except OPEN_ERRORS as exc:
            self.counters["write_errors"] += 1
            log.warning("provider store: a batch of %d records failed: %s", len(batch), str(exc).splitlines()[0])
            for p in batch:
                p.error = exc
        else:
            self.counters["records_written"] += len(batch)
            self.counters["transactions"] += 1
            self._after_commit(batch, peers_written)
        for p in batch:
            p.done.set()

    async def _upsert_peers(self, conn: Any, batch: list[_Pending]) -> list[_Pending]:
        """Upsert the batch's providers into ``peers``; return the announcements written.

        A peer whose same addresses we wrote less than PEER_REFRESH ago is skipped: a
        server hears the same providers all the time, and their row barely changes.
        """
        latest: dict[bytes, _Pending] = {}
        for p in batch:  # per peer: the latest announcement that carried addresses wins
            if p.addrs or p.peer not in latest:
                latest[p.peer] = p
        written, with_addrs, without = [], [], []
        for peer in sorted(latest):
            p = latest[peer]
            last = self._peer_written.get(peer)
            if last is not None and last[1] > p.received_at - PEER_REFRESH and (not p.addrs or last[0] == p.addrs):
                continue
            written.append(p)
            row = {"peer_id": peer, "peer_id_text": self._peer_text.get(peer) or base58.b58encode(peer).decode(),
                   "addrs": pack_addrs(p.addrs), "addrs_expire_at": p.received_at + self._addr_ttl if p.addrs else 0,
                   "protocols": "", "agent": "", "first_seen_at": p.received_at, "last_seen_at": p.received_at}
            (with_addrs if p.addrs else without).append(row)
        if with_addrs:
            await conn.execute(self._upsert_peer_addrs, with_addrs)
        if without:
            await conn.execute(self._upsert_peer_seen, without)
        return written

    def _upsert(self, model: type, conflict: list[str], update: list[str]) -> Any:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = insert(model)
        return stmt.on_conflict_do_update(index_elements=conflict, set_={c: stmt.excluded[c] for c in update})

    def _after_commit(self, batch: list[_Pending], peers_written: list[_Pending]) -> None:
        for p in peers_written:
            last = self._peer_written.get(p.peer)
            self._peer_written[p.peer] = (p.addrs or (last[0] if last else ()), p.received_at)
        self._commits += 1
        self._recent.append((self._commits, frozenset(p.key for p in batch) | {p.peer for p in batch}))
        for p in batch:
            cached = self._sets.get(p.key)
            if cached is not None:
                cached.providers[p.peer] = (p.received_at, p.expires_at)
            if p.addrs:
                self._addrs[p.peer] = (p.addrs, p.received_at + self._addr_ttl)

    def _written_since(self, commit: int, ids: Iterable[bytes]) -> bool:
        if self._recent and self._recent[0][0] > commit + 1:
            return True  # older than we remember: assume it was
        wanted = set(ids)
        return any(n > commit and not wanted.isdisjoint(touched) for n, touched in self._recent)

    # -- reads --------------------------------------------------------------------

    async def get_providers(self, key: bytes, limit: int | None = None) -> list[ProviderRecord]:
        key = check_key(key)
        now = int(self._clock())
        providers = await self._provider_set(key)
        live = [(peer, r, e) for peer, (r, e) in providers.items() if e > now]
        random.shuffle(live)  # as go does: spread load over providers, not peer-id order
        if limit is not None:
            live = live[: max(limit, 0)]
        addrs = await self._live_addrs([peer for peer, _, _ in live], now)
        return [make_record(key, peer, r, e, addrs.get(peer, ())) for peer, r, e in live]

    async def _provider_set(self, key: bytes) -> dict[bytes, tuple[int, int]]:
        """The key's providers, from the LRU or else (with their addresses) from one query."""
        cached = self._sets.get(key)
        if cached is not None:
            return cached.providers
        started = self._commits
        r, p = ProviderRecordRow, PeerRow
        query = (
            select(r.peer_id, r.received_at, r.expires_at, p.addrs, p.addrs_expire_at)
            .outerjoin(p, p.peer_id == r.peer_id)
            .where(r.key_mh == key, r.expires_at > int(self._clock()))
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        providers = {bytes(peer): (received, expires) for peer, received, expires, _, _ in rows}
        if not self._written_since(started, (key, *providers)):  # else a commit raced this read
            for peer, _, _, blob, addrs_expire_at in rows:
                if blob is not None:
                    self._addrs[bytes(peer)] = (unpack_addrs(bytes(blob)), addrs_expire_at)
            if providers:  # as go: only non-empty sets are cached
                self._sets[key] = _CachedSet(providers)
        return providers

    async def _live_addrs(self, peers: list[bytes], now: int) -> dict[bytes, tuple[bytes, ...]]:
        found: dict[bytes, tuple[bytes, ...]] = {}
        missing = []
        for peer in peers:
            entry = self._addrs.get(peer)
            if entry is None:
                missing.append(peer)
            elif entry[1] > now:
                found[peer] = entry[0]
        if missing:
            started = self._commits
            async with self._engine.connect() as conn:
                rows = (await conn.execute(
                    select(PeerRow.peer_id, PeerRow.addrs, PeerRow.addrs_expire_at).where(PeerRow.peer_id.in_(missing))
                )).all()
            fresh = not self._written_since(started, missing)
            for peer, blob, expire_at in rows:
                peer, entry = bytes(peer), (unpack_addrs(bytes(blob)), expire_at)
                if fresh:
                    self._addrs[peer] = entry
                if expire_at > now:
                    found[peer] = entry[0]
        return found

    # -- expiry and counts --------------------------------------------------------

    async def sweep_expired(self) -> int:
        """Delete expired records, ``sweep_batch`` per transaction, so writers never wait long."""
        deleted = 0
        now = int(self._clock())
        pk = tuple_(ProviderRecordRow.key_mh, ProviderRecordRow.peer_id)
        while True:
            doomed = select(ProviderRecordRow.key_mh, ProviderRecordRow.peer_id).where(
                ProviderRecordRow.expires_at <= now
            ).limit(self._sweep_batch)
            async with self._engine.begin() as conn:
                n = (await conn.execute(delete(ProviderRecordRow).where(pk.in_(doomed)))).rowcount
            deleted += n
            if n < self._sweep_batch:
                break
        for cached in self._sets.values():  # reads filter expired entries; this frees their memory
            for peer in [p for p, (_, e) in cached.providers.items() if e <= now]:
                del cached.providers[peer]
        self.counters["swept"] += deleted
        return deleted

    async def _sweeper(self) -> None:
        while True:
            await anyio.sleep(self._sweep_interval)
            try:
                n = await self.sweep_expired()
                log.debug("provider store: swept %d expired records", n)
            except OPEN_ERRORS as exc:
                log.warning("provider store: expiry sweep failed: %s", str(exc).splitlines()[0])

    async def stats(self) -> ProviderStoreStats:
        now = int(self._clock())
        r = ProviderRecordRow
        live = r.expires_at > now
        query = select(
            func.count(),
            func.count(func.distinct(r.key_mh)),
            func.count(func.distinct(r.peer_id)),
            func.count().filter(r.expires_at <= now + HOUR),
        ).where(live)
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
