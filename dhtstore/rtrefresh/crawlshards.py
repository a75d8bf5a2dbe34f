"""Crawl shards: the heads of a shared store split the crawl of the full routing table.

Several node identities ("heads") may share one PostgreSQL store and its
``network_peers``. Crawling the whole network from each would cost N times one crawl,
so the keyspace is cut into ``2**bits`` shards by key prefix and each head leases a
fair share of them in ``crawl_claims``; its crawler visits only peers in its shards,
and its table reads in the rows the others wrote (``FullTable.read_in``).

A head announces itself in ``crawl_heads`` and renews that lease and its claims every
``lease / 4``. Fair: with H live heads, the head of rank r (by owner id) gets
``S // H`` shards, one more when ``r < S % H``, so the shares differ by one at most
and sum to S. Above its share a head releases shards, below it takes unclaimed or
expired ones; a newcomer gets its share once the others have released theirs (within
two renewals), and a head that stops has its shards taken over after its lease ends.
Each rebalance is one short transaction under a store-wide turn (``take_turn``), as
reprovide claims are. Times are each head's wall clock; heads keep them in step (NTP),
far closer than the lease.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import anyio
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.dialects import dialect_insert
from ..data.failures import store_call
from ..data.locks import take_turn
from ..data.models import CrawlClaimRow, CrawlHeadRow
from ..errors import StoreError
from ..routingtable.api import KeyShards

log = logging.getLogger(__name__)

SHARD_BITS = 4  # 16 shards: a fair share for up to 16 heads
LEASE = 120  # seconds a head's claims outlive its last renewal
CRAWL_CLAIMS_LOCK = 0x6468_7463_7277_6C63  # advisory lock id ("dhtcrwlc"): one rebalance at a time


def fair_share(shards: int, heads: list[str], owner: str) -> int:
    """How many of ``shards`` the head ``owner`` (one of ``heads``) should crawl."""
    ranked = sorted(heads)
    base, extra = divmod(shards, len(ranked))
    return base + (1 if ranked.index(owner) < extra else 0)


class CrawlShards:
    """One head's lease on its share of the crawl, in ``crawl_heads`` and ``crawl_claims``."""

    def __init__(
        self,
        engine: AsyncEngine,
        owner: str,
        *,
        bits: int = SHARD_BITS,
        lease: int = LEASE,
        wall_clock: Callable[[], float] = time.time,
    ):
        if not 0 <= bits <= 8:
            raise ValueError(f"shard bits {bits} outside 0..8")
        self.engine = engine
        self.owner = owner
        self.bits = bits
        self.lease = lease
        self._wall = wall_clock
        self.held = KeyShards(bits, frozenset())
        self.renewed_at = -float("inf")  # wall-clock time of the last rebalance that reached the store
        self.counters: Counter[str] = Counter()

    @store_call
    async def rebalance(self) -> KeyShards:
        """Renew this head and its claims, then release or take shards toward its fair
        share; returns the shards it holds now (also in ``held``)."""
        now = int(self._wall())
        total = 1 << self.bits
        h, c = CrawlHeadRow, CrawlClaimRow
        async with self.engine.begin() as conn:
            await take_turn(conn, CRAWL_CLAIMS_LOCK)
            head = dialect_insert(self.engine)(h).values(owner=self.owner, started_at=now, expires_at=now + self.lease)
            await conn.execute(head.on_conflict_do_update(index_elements=["owner"], set_={"expires_at": now + self.lease}))
            await conn.execute(delete(h).where(h.expires_at <= now))
            await conn.execute(delete(c).where(c.expires_at <= now, c.owner != self.owner))
            heads = list((await conn.execute(select(h.owner))).scalars())
            claims = (await conn.execute(select(c.shard, c.owner).where(c.shard_bits == self.bits))).all()
            mine = sorted(s for s, o in claims if o == self.owner)
            taken = {s for s, _ in claims}
            share = fair_share(total, heads, self.owner)
            if len(mine) > share:  # others joined: give back the last ones
                extra = mine[share:]
                await conn.execute(delete(c).where(c.shard_bits == self.bits, c.owner == self.owner, c.shard.in_(extra)))
                mine = mine[:share]
                self.counters["shards_released"] += len(extra)
            if mine:
                await conn.execute(
                    update(c).where(c.shard_bits == self.bits, c.owner == self.owner).values(expires_at=now + self.lease)
                )
            free = [s for s in range(total) if s not in taken][: max(0, share - len(mine))]
            if free:
                await conn.execute(
                    dialect_insert(self.engine)(c),
                    [{"shard_bits": self.bits, "shard": s, "owner": self.owner, "claimed_at": now, "expires_at": now + self.lease} for s in free],
                )
                self.counters["shards_taken"] += len(free)
                mine = sorted(mine + free)
        self.held = KeyShards(self.bits, frozenset(mine))
        self.renewed_at = now
        return self.held

    @store_call
    async def release(self) -> None:
        """Leave the crawl (at exit): the others take the shards at once, not after the lease."""
        h, c = CrawlHeadRow, CrawlClaimRow
        async with self.engine.begin() as conn:
            await take_turn(conn, CRAWL_CLAIMS_LOCK)
            await conn.execute(delete(c).where(c.owner == self.owner))
            await conn.execute(delete(h).where(h.owner == self.owner))
        self.held = KeyShards(self.bits, frozenset())

    async def run(self, on_change: Callable[[KeyShards], None]) -> None:
        """Rebalance every ``lease / 4`` until cancelled, telling ``on_change`` the shards
        held after each; release them on the way out. A store failure keeps the shards
        while their lease runs (tried again at the next turn); past it another head may
        have taken them, so this one stops crawling them until the store is back."""
        try:
            while True:
                try:
                    on_change(await self.rebalance())
                except StoreError as exc:
                    log.warning("crawl shards not renewed: %s", exc)
                    if self.held.shards and self._wall() - self.renewed_at >= self.lease:
                        self.held = KeyShards(self.bits, frozenset())
                        on_change(self.held)
                await anyio.sleep(self.lease / 4)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                try:
                    await self.release()
                except StoreError as exc:
                    log.warning("crawl shards not released at exit: %s", exc)

