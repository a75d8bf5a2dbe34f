"""The SQL ProviderStore: batched durable writes, an LRU of provider sets, an expiry sweep.

Writes. ``add_provider`` validates, queues the record and waits; one writer task takes
everything queued and commits it in one transaction (group commit), then wakes the
callers. A public Amino server receives ~1.5k provider records/s; one transaction per
record is what made go-libp2p-kad-dht write 20 GB in 3 h (kubo#11432, fixed by
batching in go-libp2p-kad-dht#1293). Re-announcing (key, provider) is an upsert
(``ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL alike). On SQLite (WAL,
synchronous=NORMAL) a committed record survives the process being killed; only a
power loss can take the last transactions. On PostgreSQL a batch is one statement
(``_PG_BATCH``: the ``peers`` and the records upserts from arrays) sent in autocommit
on the writer's own connection, so it is its own transaction, committed
(synchronous_commit as the server has it) before the reply that wakes the callers:
one round trip per batch, where BEGIN, two statements, COMMIT and a pool checkout
(whose pre-ping is three more) took seven; it halved the writer's CPU per batch.
Every batch is sorted by (key, provider) and its peers by peer id, so concurrent
writers (other processes on the same store) lock rows in one order and cannot deadlock.

Reads. An LRU (go: 256 keys) holds provider sets; a second one holds provider
addresses. Both only ever hold committed data: the writer updates them after its
commit, and a read that raced a commit touching its key does not fill the cache.

Expiry. Reads filter expired records themselves; a background sweep deletes them in
batches, each in its own short transaction.

Shared stores. Several processes (``dhtstore run --identity …``) may share one
PostgreSQL store: then a cached provider set or address list is used for at most
``shared_cache_ttl`` seconds, so a record another process received is served here
within that time (a TTL rather than LISTEN/NOTIFY: nothing to lose across reconnects,
no per-commit notification traffic; see BENCHMARKS.md for what it costs), and the
sweep runs in one process at a time (a PostgreSQL advisory lock). A SQLite store has
a single writer process, and keeps its caches until they are evicted.

Store outages. A batch whose transaction failed for a connection reason (PostgreSQL
restarted, the connection killed) is retried on a new connection a few times (as an
upsert it is idempotent) before its callers are failed: an ``add_provider`` that
returned was committed, one that raised was maybe not. (A failure on the writer's held
PostgreSQL connection is first retried at once on a new one: it may have died idle.) Meanwhile ``available`` is
False, reads answer from the caches what they can (a shared store's stale sets too),
and a probe notices the store's return.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from cachetools import LRUCache, TTLCache
from sqlalchemy import bindparam, delete, func, select, text, tuple_
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    NotSupportedError,
    ProgrammingError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..amino import PROVIDER_ADDR_TTL, PROVIDER_GC_INTERVAL
from ..data.addrs import pack_addrs, unpack_addrs
from ..data.dialects import upsert
from ..data.engine import OPEN_ERRORS
from ..data.locks import try_advisory_lock
from ..data.models import PeerRow, ProviderRecordRow
from ..data.schema import open_store
from ..errors import StoreError
from ..peerid import PeerId
from .api import ProviderRecord, ProviderStoreStats
from .validation import (
    base58btc,
    check_addrs,
    check_key,
    check_provider,
    check_ttl,
    make_record,
)

log = logging.getLogger(__name__)

HOUR = 3600
RECENT_COMMITS = 64  # commits remembered to tell whether a read raced a write
PEER_REFRESH = 60  # seconds: how stale peers.last_seen_at / addrs_expire_at may get
GATHER_ROUNDS = 8  # event-loop turns a transaction waits for more records to join it
SHARED_CACHE_TTL = 1.0  # seconds a cached entry may hide another process's write
RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0, 4.0)  # seconds before each retry of a failed batch
PROBE_INTERVAL = 1.0  # seconds between checks of a store that is down
HEALTH_INTERVAL = 5.0  # seconds between checks of a store that is up (an idle node notices an outage too)
PROBE_TIMEOUT = 5.0  # seconds a check may take before the store counts as down
SWEEP_LOCK = 0x6468_7473_7765_6570  # advisory lock id ("dhtsweep"): one sweeper per store
_NOT_TRANSIENT = (IntegrityError, DataError, ProgrammingError, NotSupportedError)  # retrying cannot help


# PostgreSQL: a batch is one statement, run outside an explicit transaction (so it is its
# own transaction, committed before its reply): the providers' ``peers`` rows first (the
# CTE, run to completion by the one-time filter before any record row is read), then the
# records; each from arrays, in the order given (sorted by the caller), so writers lock
# rows in one order. One round trip per batch instead of BEGIN, two statements, COMMIT.
_PG_BATCH = """
WITH written_peers AS (
    INSERT INTO peers AS cur (peer_id, peer_id_text, addrs, addrs_expire_at, protocols, agent, first_seen_at, last_seen_at)
    SELECT u.peer_id, u.peer_id_text, u.addrs, u.addrs_expire_at, '', '', u.seen_at, u.seen_at
    FROM unnest($6::bytea[], $7::text[], $8::bytea[], $9::bigint[], $10::bigint[])
        WITH ORDINALITY AS u(peer_id, peer_id_text, addrs, addrs_expire_at, seen_at, n)
    ORDER BY u.n
    ON CONFLICT (peer_id) DO UPDATE SET
        addrs = CASE WHEN octet_length(excluded.addrs) > 0 THEN excluded.addrs ELSE cur.addrs END,
        addrs_expire_at = CASE WHEN octet_length(excluded.addrs) > 0 THEN excluded.addrs_expire_at ELSE cur.addrs_expire_at END,
        last_seen_at = excluded.last_seen_at
    RETURNING 1
)
INSERT INTO provider_records AS cur (key_mh, peer_id, key_b58, received_at, expires_at)
SELECT r.key_mh, r.peer_id, r.key_b58, r.received_at, r.expires_at
FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::bigint[], $5::bigint[])
    WITH ORDINALITY AS r(key_mh, peer_id, key_b58, received_at, expires_at, n)
WHERE (SELECT count(*) FROM written_peers) >= 0
ORDER BY r.n
ON CONFLICT (key_mh, peer_id) DO UPDATE SET received_at = excluded.received_at, expires_at = excluded.expires_at
"""

# A key's live providers with their addresses: built once, since building a statement
# (and its cache key) on every read cost about a tenth of a server's CPU.
_PROVIDERS_OF_KEY = (
    select(ProviderRecordRow.peer_id, ProviderRecordRow.received_at, ProviderRecordRow.expires_at, PeerRow.addrs, PeerRow.addrs_expire_at)
    .outerjoin(PeerRow, PeerRow.peer_id == ProviderRecordRow.peer_id)
    .where(ProviderRecordRow.key_mh == bindparam("key"), ProviderRecordRow.expires_at > bindparam("now"))
)


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
    fetched_at: float = field(default_factory=time.monotonic)  # for a shared store's TTL


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
        shared: bool | None = None,
        shared_cache_ttl: float = SHARED_CACHE_TTL,
        retry_delays: tuple[float, ...] | None = None,
    ):
        self._engine = engine
        self._clock = clock
        self._dialect = engine.dialect.name
        # Other processes may write the store: PostgreSQL unless told otherwise.
        self.shared = self._dialect == "postgresql" if shared is None else shared
        self._sets: LRUCache[bytes, _CachedSet] = LRUCache(cache_size)
        # A stale set is refetched, but kept to answer from while the store is down.
        self._set_ttl = shared_cache_ttl if self.shared else None
        self._addrs: LRUCache[bytes, tuple[tuple[bytes, ...], int]] = (
            TTLCache(addr_cache_size, ttl=shared_cache_ttl, timer=time.monotonic) if self.shared
            else LRUCache(addr_cache_size)
        )
        # None: RETRY_DELAYS on a server; none on SQLite, a local file whose errors are not
        # lost connections (and whose busy timeout already waits for other writers).
        self._retry_delays = retry_delays if retry_delays is not None else (() if self._dialect == "sqlite" else RETRY_DELAYS)
        self.available = True  # False from a failed store operation until the store answers again
        self._down = anyio.Event()
        self._addr_ttl = int(PROVIDER_ADDR_TTL.total_seconds())
        self._max_batch = max_batch
        self._peer_text: LRUCache[bytes, str] = LRUCache(addr_cache_size)  # validated peer id -> base58
        # peer -> (addresses, time) of the last ``peers`` row we wrote for it
        self._peer_written: LRUCache[bytes, tuple[tuple[bytes, ...], int]] = LRUCache(addr_cache_size)
        # The hot statement, compiled once to the driver's SQL and run with positional
        # rows: SQLAlchemy's per-row parameter processing halved the batch rate.
        upsert_records = upsert(engine, ProviderRecordRow, ["key_mh", "peer_id"], ["received_at", "expires_at"])
        compiled = upsert_records.compile(dialect=engine.dialect)
        assert compiled.positiontup == ["key_mh", "peer_id", "key_b58", "received_at", "expires_at"]
        self._upsert_records_sql = str(compiled)
        self._upsert_peer_addrs = upsert(engine, PeerRow, ["peer_id"], ["addrs", "addrs_expire_at", "last_seen_at"])
        self._upsert_peer_seen = upsert(engine, PeerRow, ["peer_id"], ["last_seen_at"])
        self._sweep_interval = sweep_interval.total_seconds()
        self._sweep_batch = sweep_batch
        self._pending: dict[tuple[bytes, bytes], _Pending] = {}
        self._wake = anyio.Event()
        self._commits = 0
        self._recent: deque[tuple[int, frozenset[bytes]]] = deque(maxlen=RECENT_COMMITS)
        self._task_group: TaskGroup | None = None
        self._closing = False
        self._writer_stopped = anyio.Event()
        self._conn: AsyncConnection | None = None  # PostgreSQL: the writer's own (autocommit) connection
        self.counters = {
            "records_written": 0, "transactions": 0, "write_errors": 0, "rejected": 0, "swept": 0,
            "write_retries": 0, "read_errors": 0, "store_down": 0, "sweeps_skipped": 0, "stale_reads": 0,
        }

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> SqlProviderStore:
        if self._task_group is not None:
            raise RuntimeError("provider store already started")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._writer)
        self._task_group.start_soon(self._sweeper)
        self._task_group.start_soon(self._prober)
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
        try:
            key, addrs, lifetime = check_key(key), check_addrs(addrs), check_ttl(ttl)
            peer = self._checked_peer(provider)
        except ValueError:
            self.counters["rejected"] += 1
            raise
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
            self._peer_text[raw] = base58btc(raw)
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
            if self._conn is not None:
                conn, self._conn = self._conn, None
                with anyio.CancelScope(shield=True):
                    try:
                        await conn.close()
                    except OPEN_ERRORS:
                        pass  # a dead connection: nothing of ours is on it
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
        rows = [(p.key, p.peer, base58btc(p.key), p.received_at, p.expires_at) for p in batch]
        with anyio.CancelScope(shield=True):  # never leave callers waiting on a half-done batch
            delays = iter((*self._retry_delays, None))
            while True:
                reused = self._conn is not None
                try:
                    peers_written = await self._write(batch, rows)
                except OPEN_ERRORS as exc:
                    if reused and not isinstance(exc, _NOT_TRANSIENT):
                        # The writer's connection may have died while idle (a server restart):
                        # once, at once, on a new one, as the pool's pre-ping would on a checkout.
                        continue
                    self._store_failed(exc)
                    retry_delay = next(delays)
                    if retry_delay is None or isinstance(exc, _NOT_TRANSIENT):
                        self.counters["write_errors"] += 1
                        log.warning("provider store: a batch of %d records failed: %s", len(batch), _first_line(exc))
                        for p in batch:
                            p.error = exc
                        break
                    self.counters["write_retries"] += 1
                    await anyio.sleep(retry_delay)  # the pool replaces the dead connections meanwhile
                else:
                    self._store_answered()
                    self.counters["records_written"] += len(batch)
                    self.counters["transactions"] += 1
                    self._after_commit(batch, peers_written)
                    break
        for p in batch:
            p.done.set()

    # -- store health ------------------------------------------------------------

    def _store_failed(self, exc: BaseException) -> None:
        if isinstance(exc, _NOT_TRANSIENT):
            return  # the store answered; the statement was wrong
        if self.available:
            self.available = False
            self.counters["store_down"] += 1
            self._down.set()
            log.warning("provider store: store unavailable (%s); answering from cache until it is back", _first_line(exc))

    def _store_answered(self) -> None:
        if not self.available:
            self.available = True
            self._down = anyio.Event()
            log.warning("provider store: store available again")

    async def _prober(self) -> None:
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
            except (*OPEN_ERRORS, TimeoutError) as exc:
                self._store_failed(exc)
                continue
            self._store_answered()

    async def _write(self, batch: list[_Pending], rows: list[tuple[Any, ...]]) -> list[_Pending]:
        """Commit the (sorted) batch's peers and records; return the announcements whose
        ``peers`` row was written."""
        written = self._peers_to_write(batch)
        if self._dialect != "postgresql":
            async with self._engine.begin() as conn:
                await self._upsert_peers(conn, written)
                await conn.exec_driver_sql(self._upsert_records_sql, rows)
            return written
        peer_rows = [(p.peer, self._peer_text.get(p.peer) or base58btc(p.peer), pack_addrs(p.addrs),
                      p.received_at + self._addr_ttl if p.addrs else 0, p.received_at) for p in written]
        columns = [list(c) for c in zip(*rows)] + ([list(c) for c in zip(*peer_rows)] or [[], [], [], [], []])
        if self._conn is None:  # the writer's own connection: no pool checkout (and pre-ping) per batch
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            await self._conn.exec_driver_sql(_PG_BATCH, tuple(columns))
        except BaseException:
            await self._drop_connection()
            raise
        return written

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.invalidate()  # not back to the pool: it may be what failed
                await conn.close()

    def _peers_to_write(self, batch: list[_Pending]) -> list[_Pending]:
        """The announcements whose provider's ``peers`` row to upsert, in peer order.

        A peer whose same addresses we wrote less than PEER_REFRESH ago is skipped: a
        server hears the same providers all the time, and their row barely changes.
        """
        latest: dict[bytes, _Pending] = {}
        for p in batch:  # per peer: the latest announcement that carried addresses wins
            if p.addrs or p.peer not in latest:
                latest[p.peer] = p
        written = []
        for peer in sorted(latest):
            p = latest[peer]
            last = self._peer_written.get(peer)
            if last is not None and last[1] > p.received_at - PEER_REFRESH and (not p.addrs or last[0] == p.addrs):
                continue
            written.append(p)
        return written

    async def _upsert_peers(self, conn: Any, written: list[_Pending]) -> None:
        """SQLite: upsert these announcements' ``peers`` rows (two statements: with and
        without addresses; one writer at a time, so their order does not matter)."""
        with_addrs, without = [], []
        for p in written:
            row = {"peer_id": p.peer, "peer_id_text": self._peer_text.get(p.peer) or base58btc(p.peer),
                   "addrs": pack_addrs(p.addrs), "addrs_expire_at": p.received_at + self._addr_ttl if p.addrs else 0,
                   "protocols": "", "agent": "", "first_seen_at": p.received_at, "last_seen_at": p.received_at}
            (with_addrs if p.addrs else without).append(row)
        if with_addrs:
            await conn.execute(self._upsert_peer_addrs, with_addrs)
        if without:
            await conn.execute(self._upsert_peer_seen, without)

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

    def _touched_since(self, commit: int) -> set[bytes] | None:
        """Keys and peers written by commits after ``commit``; None if we no longer know."""
        if self._recent and self._recent[0][0] > commit + 1:
            return None
        touched: set[bytes] = set()
        for n, ids in self._recent:
            if n > commit:
                touched |= ids
        return touched

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
        if cached is not None and (self._set_ttl is None or time.monotonic() - cached.fetched_at < self._set_ttl):
            return cached.providers
        started = self._commits
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(_PROVIDERS_OF_KEY, {"key": key, "now": int(self._clock())})).all()
        except OPEN_ERRORS as exc:
            self.counters["read_errors"] += 1
            self._store_failed(exc)
            if cached is not None:  # stale, but the best answer while the store is down
                self.counters["stale_reads"] += 1
                return cached.providers
            raise StoreError(f"provider store unavailable: {_first_line(exc)}") from None
        self._store_answered()
        if cached is not None:  # a stale set: this read supersedes it (re-cached below if it may be)
            self._sets.pop(key, None)
        providers = {bytes(peer): (received, expires) for peer, received, expires, _, _ in rows}
        # Cache only what no commit changed while this read ran (the writer updates the
        # caches after each commit, and this result may predate it).
        touched = self._touched_since(started)
        if touched is not None:
            for peer, _, _, blob, addrs_expire_at in rows:
                if blob is not None and bytes(peer) not in touched:
                    self._addrs[bytes(peer)] = (unpack_addrs(bytes(blob)), addrs_expire_at)
            if providers and key not in touched:  # as go: only non-empty sets are cached
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
            try:
                async with self._engine.connect() as conn:
                    rows = (await conn.execute(
                        select(PeerRow.peer_id, PeerRow.addrs, PeerRow.addrs_expire_at).where(PeerRow.peer_id.in_(missing))
                    )).all()
            except OPEN_ERRORS as exc:  # the providers are known; only some addresses are not
                self.counters["read_errors"] += 1
                self._store_failed(exc)
                return found
            touched = self._touched_since(started)
            for peer, blob, expire_at in rows:
                peer, entry = bytes(peer), (unpack_addrs(bytes(blob)), expire_at)
                if touched is not None and peer not in touched:
                    self._addrs[peer] = entry
                if expire_at > now:
                    found[peer] = entry[0]
        return found

    # -- expiry and counts --------------------------------------------------------

    async def sweep_expired(self) -> int:
        """Delete expired records, ``sweep_batch`` per transaction, so writers never wait long.

        On a shared PostgreSQL store only one process sweeps at a time: the others skip
        this round (they return 0) while the advisory lock is held. The lock belongs to
        a connection, so a sweeper that dies releases it.
        """
        if self._dialect != "postgresql":
            return await self._sweep_batches()
        async with try_advisory_lock(self._engine, SWEEP_LOCK) as lock:
            if lock is None:
                self.counters["sweeps_skipped"] += 1
                return 0
            return await self._sweep_batches()

    async def _sweep_batches(self) -> int:
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
                self._store_failed(exc)
                log.warning("provider store: expiry sweep failed: %s", _first_line(exc))

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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
