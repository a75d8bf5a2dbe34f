"""Claims: which process of a shared store provides which slice of the keyspace now.

Several node processes may share one PostgreSQL store and its provide list. Before a
process provides the keys under a prefix it claims the prefix in ``reprovide_claims``;
nobody else provides keys under a live claim, so each key goes out from exactly one
process per cycle. A claim is a lease: its owner renews it while it works and
releases it when done; a process that dies stops renewing, and once the lease has run
out any other process takes the slice over. Keys are marked provided (due again next
cycle) before their claim is released, so a process that claims a slice after
another finished it finds nothing due there.

Claiming reads every live claim and checks for overlap, so claimers take turns: on
PostgreSQL under a transaction-scoped advisory lock, on SQLite under the write lock
its first statement takes (``data.locks.take_turn``). Claims are few (one or two per
process) and held for minutes, so the turn is short. (Row locks with ``FOR UPDATE
SKIP LOCKED`` would not do: a claim is a range of keys, and two ranges overlap without
sharing a row.) Times are each process's clock: processes sharing a store keep their
clocks in step (NTP), far closer than the lease of minutes.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.failures import store_call
from ..data.locks import take_turn
from ..data.models import ReprovideClaimRow
from .api import Claim
from .keyspace import Prefix, intersection

CLAIMS_LOCK = 0x6468_7473_636C_6169  # advisory lock id ("dhtsclai"): one claimer at a time


class SqlClaimStore:
    """``provider.api.ClaimStore`` in the table ``reprovide_claims``."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    @store_call
    async def claim(self, prefix: Prefix, owner: str, now: int, lease: int) -> bool:
        """Claim ``prefix`` for ``owner`` until ``now + lease``; False if another owner
        holds a live claim that overlaps it. Claims the owner left overlapping it (a
        previous run of the same identity, killed) are replaced."""
        c = ReprovideClaimRow
        async with self.engine.begin() as conn:
            await take_turn(conn, CLAIMS_LOCK)
            await conn.execute(delete(c).where(c.expires_at <= now))
            others = (await conn.execute(select(c.region).where(c.owner != owner))).scalars()
            if any(intersection(Prefix.parse(region), prefix) for region in others):
                return False
            await conn.execute(
                delete(c).where(c.owner == owner, c.first_key <= prefix.last_bytes(), c.last_key >= prefix.first_bytes())
            )
            await conn.execute(
                insert(c).values(
                    region=str(prefix),
                    first_key=prefix.first_bytes(),
                    last_key=prefix.last_bytes(),
                    owner=owner,
                    claimed_at=now,
                    expires_at=now + lease,
                )
            )
        return True

    @store_call
    async def renew(self, prefix: Prefix, owner: str, now: int, lease: int) -> bool:
        """Extend the owner's claim; False if it is gone (expired and taken over)."""
        c = ReprovideClaimRow
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(c).where(c.region == str(prefix), c.owner == owner).values(expires_at=now + lease)
            )
            return bool(result.rowcount == 1)

    @store_call
    async def release(self, prefix: Prefix, owner: str) -> None:
        c = ReprovideClaimRow
        async with self.engine.begin() as conn:
            await conn.execute(delete(c).where(c.region == str(prefix), c.owner == owner))

    @store_call
    async def live(self, now: int) -> list[Claim]:
        """Every claim not yet expired, in keyspace order."""
        c = ReprovideClaimRow
        stmt = select(c.region, c.owner, c.claimed_at, c.expires_at).where(c.expires_at > now).order_by(c.first_key)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Claim(Prefix.parse(region), owner, at, until) for region, owner, at, until in rows]
