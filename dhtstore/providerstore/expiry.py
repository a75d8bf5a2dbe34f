"""The expiry sweep: reads already skip expired records; this deletes them.

Every ``interval`` (go-libp2p-kad-dht's provider GC runs hourly) the sweep deletes the
expired records ``batch`` at a time, each batch in its own short transaction, so the
writer never waits long. On a shared PostgreSQL store one process sweeps at a time:
the others skip the round while it holds the advisory lock SWEEP_LOCK. The lock
belongs to a connection, so a sweeper that dies releases it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.dialects import is_postgresql
from ..data.failures import unavailable
from ..data.locks import try_advisory_lock
from ..data.models import ProviderRecordRow
from ..errors import StoreUnavailable
from .caches import ProviderCaches
from .health import StoreHealth
from .quotas import QuotaCounts

log = logging.getLogger(__name__)

SWEEP_LOCK = 0x6468_7473_7765_6570  # advisory lock id ("dhtsweep"): one sweeper per store


class ExpirySweep:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Callable[[], float],
        caches: ProviderCaches,
        health: StoreHealth,
        counters: dict[str, int],
        *,
        interval: float,
        batch: int,
        quotas: QuotaCounts | None = None,
    ):
        self._engine = engine
        self._clock = clock
        self._caches = caches
        self._health = health
        self._counters = counters  # "swept", "sweeps_skipped"
        self._interval = interval
        self._batch = batch
        self._quotas = quotas  # recounted after each sweep, ours or another process's

    async def sweep_expired(self) -> int:
        """Delete expired records; return how many (0 when another process is sweeping)."""
        with unavailable("provider store: expiry sweep", self._health.failed):
            if not is_postgresql(self._engine):
                deleted = await self._sweep_batches()
            else:
                async with try_advisory_lock(self._engine, SWEEP_LOCK) as lock:
                    if lock is None:
                        self._counters["sweeps_skipped"] += 1
                        deleted = 0
                    else:
                        deleted = await self._sweep_batches()
            if self._quotas is not None:
                await self._quotas.recount(int(self._clock()))
            return deleted

    async def _sweep_batches(self) -> int:
        deleted = 0
        now = int(self._clock())
        pk = tuple_(ProviderRecordRow.key_mh, ProviderRecordRow.peer_id)
        while True:
            doomed = select(ProviderRecordRow.key_mh, ProviderRecordRow.peer_id).where(
                ProviderRecordRow.expires_at <= now
            ).limit(self._batch)
            async with self._engine.begin() as conn:
                n: int = (await conn.execute(delete(ProviderRecordRow).where(pk.in_(doomed)))).rowcount
            deleted += n
            if n < self._batch:
                break
        self._caches.drop_expired(now)
        self._counters["swept"] += deleted
        return deleted

    async def run(self) -> None:
        """Sweep every ``interval``, until cancelled."""
        while True:
            await anyio.sleep(self._interval)
            try:
                n = await self.sweep_expired()
                log.debug("provider store: swept %d expired records", n)
            except StoreUnavailable as exc:
                log.warning("%s", exc)
