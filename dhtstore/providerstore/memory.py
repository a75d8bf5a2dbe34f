"""An in-memory ProviderStore with the SQL store's semantics, for simulations and tests.

Quotas as the SQL store's, counted exactly (records expired but not yet swept count).
Time comes from an injectable clock (seconds since the epoch), so a simulation can run
48 hours of expiry in no time.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta

from ..data.stats import EXPIRING_WINDOW
from ..peerid import PeerId
from .api import Announcement, ProviderQuotas, ProviderRecord, ProviderStoreStats, QuotaExceeded
from .validation import (
    PROVIDER_ADDR_TTL_S,
    check_addrs,
    check_key,
    check_provider,
    check_ttl,
    make_record,
)


class MemoryProviderStore:
    def __init__(
        self, clock: Callable[[], float] = time.time, rng: random.Random | None = None, quotas: ProviderQuotas = ProviderQuotas()
    ):
        self._clock = clock
        self.quotas = quotas
        self._per_peer: Counter[bytes] = Counter()
        self._total = 0
        self._rng = rng or random.Random()
        self._records: dict[bytes, dict[bytes, tuple[int, int]]] = {}  # key -> peer -> (received, expires)
        self._addrs: dict[bytes, tuple[tuple[bytes, ...], int]] = {}  # peer -> (addrs, expire_at)

    @property
    def available(self) -> bool:
        """Always True: memory does not go away."""
        return True

    def _now(self) -> int:
        return int(self._clock())

    async def add_provider(
        self, key: bytes, provider: PeerId, addrs: tuple[bytes, ...] = (), *, ttl: timedelta | None = None
    ) -> None:
        (refused,) = await self.add_providers([(key, provider, addrs)], ttl=ttl)
        if refused is not None:
            raise refused

    async def add_providers(self, records: Sequence[Announcement], *, ttl: timedelta | None = None) -> list[QuotaExceeded | None]:
        lifetime = check_ttl(ttl)
        checked = [(check_key(key), check_provider(provider), check_addrs(addrs)) for key, provider, addrs in records]
        now = self._now()
        refusals: list[QuotaExceeded | None] = []
        for key, peer, addrs in checked:
            refusals.append(refused := self._over_quota(key, peer))
            if refused is not None:
                continue
            self._records.setdefault(key, {})[peer] = (now, now + lifetime)
            if addrs:
                self._addrs[peer] = (addrs, now + PROVIDER_ADDR_TTL_S)
        return refusals

    def _over_quota(self, key: bytes, peer: bytes) -> QuotaExceeded | None:
        """The quota a new record would exceed (counted in if none); re-announcements pass."""
        providers = self._records.get(key, {})
        if peer in providers:
            return None
        q = self.quotas
        if len(providers) >= q.per_key:
            return QuotaExceeded("key", q.per_key)
        if self._per_peer[peer] >= q.per_provider:
            return QuotaExceeded("provider", q.per_provider)
        if self._total >= q.total:
            return QuotaExceeded("total", q.total)
        self._per_peer[peer] += 1
        self._total += 1
        return None

    async def get_providers(self, key: bytes, limit: int | None = None) -> list[ProviderRecord]:
        key = check_key(key)
        now = self._now()
        out = [
            make_record(key, peer, received, expires, self._live_addrs(peer, now))
            for peer, (received, expires) in self._records.get(key, {}).items()
            if expires > now
        ]
        self._rng.shuffle(out)  # as go does: spread load over providers
        return out if limit is None else out[: max(limit, 0)]

    def _live_addrs(self, peer: bytes, now: int) -> tuple[bytes, ...]:
        addrs, expire_at = self._addrs.get(peer, ((), 0))
        return addrs if expire_at > now else ()

    async def sweep_expired(self) -> int:
        now = self._now()
        deleted = 0
        for key in list(self._records):
            peers = self._records[key]
            for peer in [p for p, (_, expires) in peers.items() if expires <= now]:
                del peers[peer]
                self._per_peer[peer] -= 1
                deleted += 1
            if not peers:
                del self._records[key]
        self._total -= deleted
        self._per_peer = +self._per_peer  # drop the zeros
        for peer in [p for p, (_, expire_at) in self._addrs.items() if expire_at <= now]:
            del self._addrs[peer]
        return deleted

    async def stats(self) -> ProviderStoreStats:
        now = self._now()
        live = [(k, p, e) for k, peers in self._records.items() for p, (_, e) in peers.items() if e > now]
        return ProviderStoreStats(
            records=len(live),
            keys=len({k for k, _, _ in live}),
            providers=len({p for _, p, _ in live}),
            expiring_within_hour=sum(1 for _, _, e in live if e <= now + EXPIRING_WINDOW),
        )
