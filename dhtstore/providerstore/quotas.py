"""Provider-record quotas (``api.ProviderQuotas``) for the SQL store, cheap on the hot path.

No COUNT per announcement. Records per provider and in total are counted in memory:
once when the store starts and again after each expiry sweep (one GROUP BY over the
live records), and in between raised by every record this process inserts. Between
recounts a count only over-estimates (records that expired meanwhile still count), so a
quota is never overshot by this process; processes sharing a PostgreSQL store each
count the others' records only from their next recount, so together they may
overshoot by what the others inserted since.

Providers per key are read per batch, not per announcement: one query for the live
providers of the batch's keys, by the write path on its own connection (on PostgreSQL
the writer's held one: 0.4 ms, where a pool checkout costs ~4), leaving out the keys
the key filter knows are new (most of them on a single-writer store), so a batch of
fresh keys costs no query at all.
The same answer says which announcements refresh an existing record: those are always
taken, even past a quota (ipfs/specs PR #537).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.models import ProviderRecordRow
from .api import ProviderQuotas, QuotaExceeded
from .pending import PendingRecord


class QuotaCounts:
    def __init__(self, engine: AsyncEngine, quotas: ProviderQuotas, counters: dict[str, int]):
        self._engine = engine
        self.quotas = quotas
        self._counters = counters  # "quota_refused_key", "quota_refused_provider", "quota_refused_total"
        self.per_provider: Counter[bytes] = Counter()
        self.total = 0

    async def recount(self, now: int) -> None:
        """Count the live records per provider (at start, and after each sweep)."""
        r = ProviderRecordRow
        query = select(r.peer_id, func.count()).where(r.expires_at > now).group_by(r.peer_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        self.per_provider = Counter({bytes(peer): n for peer, n in rows})
        self.total = sum(self.per_provider.values())

    def admit(self, batch: list[PendingRecord], live: Iterable[tuple[bytes, bytes]]) -> list[PendingRecord]:
        """The announcements of ``batch`` within the quotas; each refused one gets its
        ``refused`` error (and is counted). ``live``: (key, provider) of the live records
        of the batch's keys that may be stored (``WritePath.live_providers``)."""
        quotas = self.quotas
        existing: dict[bytes, set[bytes]] = {}
        for key, peer in live:
            existing.setdefault(key, set()).add(peer)
        accepted = []
        for p in batch:
            providers = existing.setdefault(p.key, set())
            if p.peer in providers:  # a re-announcement: always taken
                accepted.append(p)
                continue
            if len(providers) >= quotas.per_key:
                p.refused = QuotaExceeded("key", quotas.per_key)
            elif self.per_provider[p.peer] >= quotas.per_provider:
                p.refused = QuotaExceeded("provider", quotas.per_provider)
            elif self.total >= quotas.total:
                p.refused = QuotaExceeded("total", quotas.total)
            else:
                providers.add(p.peer)
                self.per_provider[p.peer] += 1
                self.total += 1
                accepted.append(p)
                continue
            self._counters[f"quota_refused_{p.refused.reason}"] += 1
        return accepted
