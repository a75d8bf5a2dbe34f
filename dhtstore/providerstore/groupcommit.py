"""Group commit: every ``add_provider`` waiting at once shares one transaction.

A caller queues its record and waits; one writer task takes everything queued and
commits it in one transaction through the dialect's write path, then wakes the
callers. A public Amino server receives about 1.5k provider records a second, and one
transaction per record is what made go-libp2p-kad-dht write 20 GB in 3 h (kubo#11432,
fixed by batching in go-libp2p-kad-dht#1293). Re-announcing a (key, provider) while it
is queued updates the queued record; on the store it is an upsert.

A batch whose transaction failed for a connection reason (PostgreSQL restarted, the
connection killed) is retried on a new connection after each of ``retry_delays`` (as
an upsert it is idempotent) before its callers are failed: an ``add`` that returned
was committed, one that raised was maybe not. A failure on a connection the write path
held from an earlier batch is first retried at once on a new one: it may have died idle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import anyio

from ..data.failures import DATABASE_ERRORS, first_line
from ..errors import StoreUnavailable
from .api import QuotaExceeded
from .caches import ProviderCaches
from .health import NOT_TRANSIENT, StoreHealth
from .keyfilter import KeyFilter
from .pending import PendingRecord, Waiter
from .quotas import QuotaCounts

log = logging.getLogger(__name__)

Queued = tuple[bytes, bytes, str, tuple[bytes, ...]]  # key, provider, its base58 text, its addresses

GATHER_ROUNDS = 8  # event-loop turns a transaction waits for more records to join it
RETRY_DELAYS = (0.1, 0.3, 1.0, 2.0, 4.0)  # seconds before each retry of a failed batch


class WritePath(Protocol):
    """How one dialect commits a batch (``sqlitewrite``, ``postgreswrite``)."""

    @property
    def holds_connection(self) -> bool:
        """Whether the next ``write`` reuses a connection held from an earlier batch."""
        ...

    async def write(self, batch: list[PendingRecord]) -> None:
        """Commit the batch (sorted by key and provider), or raise the database's error."""
        ...

    async def live_providers(self, keys: list[bytes], now: int) -> list[tuple[bytes, bytes]]:
        """(key, provider) of the unexpired records of ``keys`` (for the quotas)."""
        ...

    async def close(self) -> None: ...


class GroupCommit:
    def __init__(
        self,
        path: WritePath,
        caches: ProviderCaches,
        health: StoreHealth,
        counters: dict[str, int],
        *,
        max_batch: int,
        retry_delays: tuple[float, ...],
        key_filter: KeyFilter | None = None,
        quotas: QuotaCounts | None = None,
    ):
        self._path = path
        self._caches = caches
        self._health = health
        self._counters = counters
        self._max_batch = max_batch
        self._retry_delays = retry_delays
        self._key_filter = key_filter
        self._quotas = quotas
        self._pending: dict[tuple[bytes, bytes], PendingRecord] = {}
        self._wake = anyio.Event()
        self.closing = False  # no more records are taken
        self._stopped = anyio.Event()

    async def add(self, records: Sequence[Queued], now: int, lifetime: int) -> list[QuotaExceeded | None]:
        """Queue the records and return once all are committed or refused: per record,
        None (stored) or the quota that refused it. StoreUnavailable if one failed."""
        if not records:
            return []
        waiter = Waiter(len(records))
        for index, (key, peer, peer_text, addrs) in enumerate(records):
            pending = self._pending.get((key, peer))
            if pending is None:
                pending = self._pending[(key, peer)] = PendingRecord(key, peer, peer_text, addrs, now, now + lifetime)
            else:  # a re-announce while the first is queued: one row, the later times and addresses
                pending.received_at, pending.expires_at = now, now + lifetime
                pending.addrs = addrs or pending.addrs
            pending.waiters.append((waiter, index))
        self._wake.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise StoreUnavailable(f"provider record not stored: {first_line(waiter.error)}") from None
        return waiter.refused

    async def run(self) -> None:
        """The writer task, until ``close``."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await self._gather()
                while self._pending:
                    await self._commit(self._take(self._max_batch))
                if self.closing:
                    return
        finally:  # also when cancelled (the node's scope is): close() must not wait forever
            try:
                with anyio.CancelScope(shield=True):
                    await self._path.close()
            finally:
                self._stopped.set()

    async def close(self) -> None:
        """Commit (or fail) what is queued, then stop the writer."""
        self.closing = True
        self._wake.set()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()

    async def _gather(self) -> None:
        """Let callers that are ready to run queue their records before this transaction
        starts: yield to the event loop until the queue stops growing (no wall-clock wait,
        so a lone caller is not delayed)."""
        for _ in range(GATHER_ROUNDS):
            before = len(self._pending)
            await anyio.sleep(0)
            if len(self._pending) == before or len(self._pending) >= self._max_batch:
                return

    def _take(self, n: int) -> list[PendingRecord]:
        keys = list(self._pending)[:n]
        return [self._pending.pop(k) for k in keys]

    async def _commit(self, batch: list[PendingRecord]) -> None:
        # One order for all writers (us and other processes) so PostgreSQL cannot deadlock.
        batch.sort(key=lambda p: (p.key, p.peer))
        keys = [p.key for p in batch]
        builds = 0
        maybe_stored = keys
        if self._key_filter is not None:  # before any reader can see the records (``keyfilter``)
            builds, maybe_stored = self._key_filter.add(keys)
        # The keys whose providers the quotas must read: not those the filter knew were new.
        quota_keys = None if self._quotas is None else maybe_stored
        with anyio.CancelScope(shield=True):  # never leave callers waiting on a half-done batch
            delays = iter((*self._retry_delays, None))
            while True:
                reused = self._path.holds_connection
                try:
                    if quota_keys is not None:  # once, before the first write attempt
                        batch = await self._within_quotas(batch, quota_keys)
                        quota_keys = None
                        if not batch:
                            break
                    await self._path.write(batch)
                except DATABASE_ERRORS as exc:
                    if reused and not isinstance(exc, NOT_TRANSIENT):
                        continue  # once, at once, on a new connection, as the pool's pre-ping would
                    self._health.failed(exc)
                    retry_delay = next(delays)
                    if retry_delay is None or isinstance(exc, NOT_TRANSIENT):
                        self._counters["write_errors"] += 1
                        log.warning("provider store: a batch of %d records failed: %s", len(batch), first_line(exc))
                        for p in batch:
                            p.error = exc
                        break
                    self._counters["write_retries"] += 1
                    await anyio.sleep(retry_delay)  # the pool replaces the dead connections meanwhile
                else:
                    self._health.answered()
                    self._counters["records_written"] += len(batch)
                    self._counters["transactions"] += 1
                    self._caches.committed(batch)
                    break
        if self._key_filter is not None:  # into a filter whose build began meanwhile
            self._key_filter.added_during(keys, builds)
        for p in batch:
            p.finish()

    async def _within_quotas(self, batch: list[PendingRecord], keys: list[bytes]) -> list[PendingRecord]:
        """The batch's announcements within the quotas (``quotas``): the live providers of
        ``keys`` are read (DATABASE_ERRORS as the write's), and the refused callers told."""
        assert self._quotas is not None
        live = await self._path.live_providers(keys, max(p.received_at for p in batch)) if keys else []
        accepted = self._quotas.admit(batch, live)
        for p in batch:
            if p.refused is not None:
                p.finish()
        return accepted
