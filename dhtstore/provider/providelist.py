"""The provide list and the reprovide schedule in SQL (tables ``provided_keys``,
``reprovide_regions`` and ``provider_state``).

Every method is one short transaction, so the CLI can write beside a running node
(SQLite waits on its busy timeout) and a kill -9 leaves each row either before or
after a change, never half-written. Writers take row locks in Kademlia-key order, so two
processes writing overlapping keys on PostgreSQL wait for each other rather than
deadlock. Rows are inserted in that order too: the sweep writes a region's keys
together, and a bulk import (``provide add --from-file``, sorted likewise) leaves them
near each other in the table, so marking a region provided dirties a few pages rather
than a page per key. Times are integer epoch seconds, as in the models.
A database that does not answer or refuses raises ``errors.StoreUnavailable``, here and
in ``claims`` (``data.failures.store_call``): callers never see a driver's or SQLAlchemy's errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
from sqlalchemy import ARRAY, ColumnElement, LargeBinary, and_, bindparam, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..data.dialects import dialect_insert, is_postgresql
from ..data.failures import store_call, unavailable
from ..data.fastread import Reader
from ..data.locks import take_turn
from ..data.models import (
    ProvideCounterRow,
    ProvidedKeyRow,
    ProviderStateRow,
    ReprovideClaimRow,
    ReprovideRegionRow,
)
from ..kadkey import Key
from .api import AddResult, Counts, KeyRow, ListRow, RegionRow
from .keyspace import Prefix
from .listfilter import ProvideListFilter

# Rows per statement: well under SQLite's 32,766 bound parameters, and large enough
# that a million-row import is a few hundred statements.
WRITE_BATCH = 2_000
READ_BATCH = 1_000
COUNT_FIRST_CAP = 1_000  # _count_smaller_side's first cap; each round multiplies it by 8
FOLD_COUNTERS_AFTER = 100  # PostgreSQL counter rows (one per writing statement) summed into one past this
REGIONS_LOCK = 0x6468_7473_7265_6769  # advisory lock id ("dhtsregi"): one region writer at a time

S = TypeVar("S")


def _kad_bytes(multihash: bytes) -> bytes:
    return Key.for_multihash(multihash).to_bytes()


def _in_kad_order(multihashes: Iterable[bytes]) -> list[bytes]:
    return sorted(set(multihashes), key=_kad_bytes)


def _chunks(items: Sequence[S], size: int) -> Iterator[Sequence[S]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _region_values(g: RegionRow) -> dict[str, object]:
    return {
        "prefix": g.prefix.first_bytes(),
        "prefix_len": g.prefix.length,
        "next_due_at": g.next_due_at,
        "last_run_at": g.last_run_at,
        "attempts": g.attempts,
        "last_error": g.last_error,
    }


def _in_prefix(prefix: Prefix) -> ColumnElement[bool]:
    return ProvidedKeyRow.kad_key.between(prefix.first_bytes(), prefix.last_bytes())


# A region's statements reach its rows through the kad_key index alone; their other
# conditions go through these expressions, which no index serves. Given the choice,
# PostgreSQL's planner (seen on statistics not yet updated after an import) intersects
# the range with next_due_at's or last_provided_at's index, and when most keys are due
# (the first provide, a catch-up after downtime) that reads the whole list's index for
# every region: 342 ms against 22 ms per region at 10M keys, quadratic over a sweep.
def _due_at() -> ColumnElement[int]:
    return ProvidedKeyRow.next_due_at + 0


def _provided_at() -> ColumnElement[int]:
    return func.coalesce(ProvidedKeyRow.last_provided_at, -1)


def _unclaimed(owner: str, now: int) -> ColumnElement[bool]:
    """Keys under no live claim of another process (``provider.claims``)."""
    c = ReprovideClaimRow
    return ~(
        select(c.region)
        .where(c.owner != owner, c.expires_at > now, ProvidedKeyRow.kad_key.between(c.first_key, c.last_key))
        .exists()
    )


async def _capped_count(conn: AsyncConnection, where: ColumnElement[bool], order: Sequence[Any], cap: int) -> int:
    # Ordered by the index's columns, so the planner walks the index range: with stale
    # statistics PostgreSQL took a LIMIT over a sequential scan (400 ms at 1M rows).
    capped = select(ProvidedKeyRow.id).where(where).order_by(*order).limit(cap).subquery()
    return int((await conn.execute(select(func.count()).select_from(capped))).scalar_one())


async def _count_smaller_side(
    conn: AsyncConnection, side: ColumnElement[bool], other: ColumnElement[bool], total: int, order: Sequence[Any]
) -> int:
    """``count(side)``, where ``side`` and ``other`` split ``total`` rows in two: counts
    both sides with growing caps until one is through, so the cost is about the smaller
    side's (an index range), whichever it is: after an import every key is due, once
    the node keeps up almost none is."""
    cap = COUNT_FIRST_CAP
    while cap <= total:
        n = await _capped_count(conn, side, order, cap)
        if n < cap:
            return n
        rest = await _capped_count(conn, other, order, cap)
        if rest < cap:
            return total - rest
        cap *= 8
    return await _capped_count(conn, side, order, total + 1)


async def _fold_counters(engine: AsyncEngine) -> None:
    """Sum PostgreSQL's delta rows into one. Exact beside writers: the DELETE takes only
    rows committed before it, and rows added meanwhile stay for the next fold."""
    async with engine.begin() as conn:
        await conn.execute(text(
            "WITH gone AS (DELETE FROM provide_counters RETURNING keys, pending, failing)"
            " INSERT INTO provide_counters (keys, pending, failing)"
            " SELECT coalesce(sum(keys), 0), coalesce(sum(pending), 0), coalesce(sum(failing), 0) FROM gone"
        ))


_CONTAINS = select(ProvidedKeyRow.id).where(ProvidedKeyRow.multihash == bindparam("mh")).limit(1)
# PostgreSQL: the lookups of one event-loop tick as one statement (``= ANY($1)``).
_CONTAINS_ANY = select(ProvidedKeyRow.multihash).where(
    ProvidedKeyRow.multihash == func.any(bindparam("mhs", type_=ARRAY(LargeBinary)))
)


class _Lookups:
    """The own-list lookups that share one statement, and its answer."""

    __slots__ = ("done", "error", "found", "keys")

    def __init__(self) -> None:
        self.keys: set[bytes] = set()
        self.done = anyio.Event()
        self.found: set[bytes] = set()
        self.error: BaseException | None = None


class ProvideListStore:
    """``provider.api.ProvideList`` in SQL. ``reader`` answers ``contains`` (a query
    per GET_PROVIDERS) without SQLAlchemy's asyncio layer (``data.fastread``);
    ``list_filter`` (SQLite; its ``run`` is the caller's task) answers the keys not in
    the list without a query."""

    def __init__(self, engine: AsyncEngine, reader: Reader | None = None, list_filter: ProvideListFilter | None = None):
        self.engine = engine
        self._reader = reader
        self._filter = list_filter
        self._insert = dialect_insert(engine)
        # PostgreSQL has no list filter (``listfilter``); its lookups are batched instead.
        self._batching = reader is not None and is_postgresql(engine)
        self._lookups: _Lookups | None = None  # the batch the lookups of this tick join

    # --- the list ---------------------------------------------------------------

    async def contains(self, multihash: bytes) -> bool:
        """True when ``multihash`` is in the provide list (one unique-index lookup,
        unless the filter knows it is not)."""
        if self._filter is not None and not self._filter.may_contain(multihash):
            return False  # before ``store_call``: its shielded scope costs more than this answer
        return await self._contains_in_store(multihash)

    @store_call
    async def _contains_in_store(self, multihash: bytes) -> bool:
        if self._batching:
            return await self._contains_batched(multihash)
        if self._reader is not None:
            return bool(await self._reader.fetch(_CONTAINS, mh=multihash))
        async with self.engine.connect() as conn:
            return (await conn.execute(_CONTAINS, {"mh": multihash})).first() is not None

    async def _contains_batched(self, multihash: bytes) -> bool:
        """The first lookup of a tick waits one event-loop turn for the others and runs
        the statement for all; each reads its answer. One pool checkout and round trip
        for the batch, where one per lookup was most of a lookup's CPU."""
        assert self._reader is not None
        lookups = self._lookups
        if lookups is not None:
            lookups.keys.add(multihash)
            await lookups.done.wait()
        else:
            lookups = self._lookups = _Lookups()
            lookups.keys.add(multihash)
            try:
                await anyio.lowlevel.checkpoint()
                self._lookups = None
                rows = await self._reader.fetch(_CONTAINS_ANY, mhs=list(lookups.keys))
                lookups.found = {bytes(r[0]) for r in rows}
            except BaseException as exc:
                lookups.error = exc
                raise
            finally:
                if self._lookups is lookups:
                    self._lookups = None
                lookups.done.set()
        if lookups.error is not None:
            raise lookups.error
        return multihash in lookups.found

    @store_call
    async def add(self, entries: Sequence[tuple[str, bytes]], now: int) -> AddResult:
        """Add ``(cid, multihash)`` pairs, due now; a multihash already listed is left as it is."""
        added = 0
        if self._filter is not None:
            self._filter.add([mh for _, mh in entries])
        first_cid = {mh: cid for cid, mh in reversed(entries)}  # of a multihash given twice, the first CID
        rows = [
            {"cid": first_cid[mh], "multihash": mh, "kad_key": kad, "added_at": now, "next_due_at": now, "attempts": 0}
            for kad, mh in sorted((_kad_bytes(mh), mh) for mh in first_cid)
        ]
        async with self.engine.begin() as conn:
            for chunk in _chunks(rows, WRITE_BATCH):
                stmt = (
                    self._insert(ProvidedKeyRow)
                    .on_conflict_do_nothing(index_elements=["multihash"])
                    .returning(ProvidedKeyRow.id)
                )
                result = await conn.execute(stmt, list(chunk))
                added += len(result.all())
        return AddResult(added=added, present=len(entries) - added)

    @store_call
    async def remove(self, multihashes: Sequence[bytes]) -> int:
        removed = 0
        async with self.engine.begin() as conn:
            for chunk in _chunks(_in_kad_order(multihashes), WRITE_BATCH):
                result = await conn.execute(delete(ProvidedKeyRow).where(ProvidedKeyRow.multihash.in_(chunk)))
                removed += result.rowcount or 0
        return removed

    async def rows(self, after: bytes | None = None, limit: int | None = None) -> AsyncIterator[ListRow]:
        """The list in multihash order, read in pages so memory stays flat."""
        with unavailable("reading the provide list failed, the store did not answer"):
            async for row in self._rows(after, limit):
                yield row

    async def _rows(self, after: bytes | None, limit: int | None) -> AsyncIterator[ListRow]:
        cursor = after
        left = limit
        while left is None or left > 0:
            page = READ_BATCH if left is None else min(READ_BATCH, left)
            stmt = select(
                ProvidedKeyRow.cid,
                ProvidedKeyRow.multihash,
                ProvidedKeyRow.added_at,
                ProvidedKeyRow.last_provided_at,
                ProvidedKeyRow.next_due_at,
                ProvidedKeyRow.attempts,
                ProvidedKeyRow.last_error,
            ).order_by(ProvidedKeyRow.multihash)
            if cursor is not None:
                stmt = stmt.where(ProvidedKeyRow.multihash > cursor)
            async with self.engine.connect() as conn:
                batch = (await conn.execute(stmt.limit(page))).all()
            for r in batch:
                yield ListRow(*r)
            if len(batch) < page:
                return
            cursor = batch[-1].multihash
            if left is not None:
                left -= len(batch)

    @store_call
    async def counts(self, now: int, interval: int, late: int) -> Counts:
        """Figures for the status; ``late``: how long past the interval a key counts as stale.

        Whatever the list's size, no scan: keys, pending and failing are the counters the
        triggers keep (revision 0006); the rest count index ranges of late keys, few on a
        node that keeps up, and each is counted from its smaller side (``_count_smaller_side``)."""
        k = ProvidedKeyRow
        stale_before = now - interval - late
        within = now - interval
        async with self.engine.connect() as conn:
            keys, pending, failing = await self._counters(conn)
            provided = keys - pending
            by_provided, by_due = (k.last_provided_at, k.added_at), (k.next_due_at,)  # the two indexes' columns
            not_within = await _count_smaller_side(
                conn, k.last_provided_at <= within, k.last_provided_at > within, provided, by_provided
            )
            stale = await _count_smaller_side(
                conn, k.last_provided_at < stale_before, k.last_provided_at >= stale_before, provided, by_provided
            ) + await _count_smaller_side(
                conn,
                and_(k.last_provided_at.is_(None), k.added_at < now - late),
                and_(k.last_provided_at.is_(None), k.added_at >= now - late),
                pending,
                by_provided,
            )
            overdue = await _count_smaller_side(conn, k.next_due_at <= now, k.next_due_at > now, keys, by_due)
        return Counts(keys, pending, keys - pending - not_within, overdue, failing, stale)

    async def _counters(self, conn: AsyncConnection) -> tuple[int, int, int]:
        c = ProvideCounterRow
        rows, keys, pending, failing = (
            await conn.execute(select(func.count(), func.sum(c.keys), func.sum(c.pending), func.sum(c.failing)))
        ).one()
        if self.engine.dialect.name == "postgresql" and rows > FOLD_COUNTERS_AFTER:
            await _fold_counters(self.engine)
        return int(keys or 0), int(pending or 0), int(failing or 0)

    # --- what the sweep reads ----------------------------------------------------

    @store_call
    async def next_due(self) -> int | None:
        """The earliest ``next_due_at`` of the list (an index lookup)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.min(ProvidedKeyRow.next_due_at)))).scalar()

    @store_call
    async def next_due_for(self, owner: str, now: int) -> int | None:
        """The earliest ``next_due_at`` among keys ``owner`` may provide: those under no
        other process's live claim."""
        k = ProvidedKeyRow
        stmt = select(k.next_due_at).where(_unclaimed(owner, now)).order_by(k.next_due_at).limit(1)
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).scalar()

    @store_call
    async def last_due(self) -> int | None:
        """The latest ``next_due_at`` of the list: when the current cycle will be through."""
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.max(ProvidedKeyRow.next_due_at)))).scalar()

    @store_call
    async def oldest_due(self, now: int, owner: str) -> tuple[int, int] | None:
        """``(kad key, next_due_at)`` of the key overdue longest that ``owner`` may
        provide (under no other process's live claim), if any is due at ``now``."""
        stmt = (
            select(ProvidedKeyRow.kad_key, ProvidedKeyRow.next_due_at)
            .where(ProvidedKeyRow.next_due_at <= now, _unclaimed(owner, now))
            .order_by(ProvidedKeyRow.next_due_at)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else (int.from_bytes(row[0], "big"), row[1])

    @store_call
    async def due_under(self, prefix: Prefix, now: int, owner: str) -> int | None:
        """The first Kademlia key under ``prefix`` due at ``now`` that ``owner`` may provide."""
        k = ProvidedKeyRow
        stmt = (
            select(k.kad_key)
            .where(_in_prefix(prefix), _due_at() <= now, _unclaimed(owner, now))
            .order_by(k.kad_key)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            kad = (await conn.execute(stmt)).scalar()
        return None if kad is None else int.from_bytes(kad, "big")

    @store_call
    async def due_keys(
        self, prefix: Prefix, before: int, limit: int | None = None, provided_before: int | None = None
    ) -> list[KeyRow]:
        """Keys under ``prefix`` due before ``before`` (and, if given, not provided since
        ``provided_before``), sorted by Kademlia key."""
        k = ProvidedKeyRow
        where = and_(_in_prefix(prefix), _due_at() < before)
        if provided_before is not None:  # (never provided: -1)
            where = and_(where, _provided_at() < provided_before)
        stmt = select(k.kad_key, k.multihash).where(where).order_by(k.kad_key)
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [KeyRow(int.from_bytes(kad, "big"), mh) for kad, mh in rows]

    @store_call
    async def count_due(self, prefix: Prefix, before: int, limit: int) -> int:
        """How many keys under ``prefix`` are due before ``before``, counting at most ``limit``."""
        k = ProvidedKeyRow
        due = select(k.id).where(_in_prefix(prefix), _due_at() < before).limit(limit).subquery()
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(due))).scalar_one()

    @store_call
    async def realign(self, prefix: Prefix, before: int, provided_since: int, next_due: int) -> None:
        """Move keys under ``prefix`` due before ``before`` but provided since
        ``provided_since`` to ``next_due``, without providing them again."""
        k = ProvidedKeyRow
        async with self.engine.begin() as conn:
            await conn.execute(
                update(k)
                .where(_in_prefix(prefix), _due_at() < before, _provided_at() >= provided_since)
                .values(next_due_at=next_due)
            )

    @store_call
    async def any_key(self, prefix: Prefix) -> bytes | None:
        """A multihash of the list under ``prefix`` (a lookup target inside it), if any."""
        stmt = select(ProvidedKeyRow.multihash).where(_in_prefix(prefix)).limit(1)
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).scalar()

    # --- what the sweep writes ----------------------------------------------------

    @store_call
    async def mark_provided(self, multihashes: Sequence[bytes], at: int, next_due: int) -> None:
        async with self.engine.begin() as conn:
            for chunk in _chunks(_in_kad_order(multihashes), WRITE_BATCH):
                await conn.execute(
                    update(ProvidedKeyRow)
                    .where(ProvidedKeyRow.multihash.in_(chunk))
                    .values(last_provided_at=at, next_due_at=next_due, attempts=0, last_error=None)
                )

    @store_call
    async def mark_failed(self, multihashes: Sequence[bytes], error: str, retry_at: int) -> None:
        async with self.engine.begin() as conn:
            for chunk in _chunks(_in_kad_order(multihashes), WRITE_BATCH):
                await conn.execute(
                    update(ProvidedKeyRow)
                    .where(ProvidedKeyRow.multihash.in_(chunk))
                    .values(next_due_at=retry_at, attempts=ProvidedKeyRow.attempts + 1, last_error=error[:1000])
                )

    @store_call
    async def max_attempts(self, multihashes: Sequence[bytes]) -> int:
        best = 0
        async with self.engine.connect() as conn:
            for chunk in _chunks(multihashes, WRITE_BATCH):
                stmt = select(func.max(ProvidedKeyRow.attempts)).where(ProvidedKeyRow.multihash.in_(chunk))
                best = max(best, (await conn.execute(stmt)).scalar() or 0)
        return best

    # --- regions ------------------------------------------------------------------

    @store_call
    async def regions(self) -> list[RegionRow]:
        r = ReprovideRegionRow
        stmt = select(r.prefix, r.prefix_len, r.next_due_at, r.last_run_at, r.attempts, r.last_error)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            RegionRow(Prefix.of(int.from_bytes(p, "big"), n), due, last, attempts, err)
            for p, n, due, last, attempts, err in rows
        ]

    @store_call
    async def replace_regions(self, covering: Prefix, regions: Sequence[RegionRow]) -> None:
        """Put ``regions`` (which tile ``covering``) in place of every region under
        ``covering``. Processes sharing the store take turns, so regions never overlap."""
        r = ReprovideRegionRow
        async with self.engine.begin() as conn:
            await take_turn(conn, REGIONS_LOCK)
            await conn.execute(
                delete(r).where(r.prefix.between(covering.first_bytes(), covering.last_bytes()), r.prefix_len >= covering.length)
            )
            if regions:
                await conn.execute(insert(r), [_region_values(g) for g in regions])

    # --- named state ----------------------------------------------------------------

    @store_call
    async def get_state(self) -> dict[str, str]:
        async with self.engine.connect() as conn:
            return dict((await conn.execute(select(ProviderStateRow.name, ProviderStateRow.value))).all())

    @store_call
    async def state_since(self, prefix: str, since: int) -> dict[str, str]:
        """The named values starting with ``prefix`` updated at or after ``since``."""
        s = ProviderStateRow
        stmt = select(s.name, s.value).where(s.name.startswith(prefix, autoescape=True), s.updated_at >= since)
        async with self.engine.connect() as conn:
            return dict((await conn.execute(stmt)).all())

    @store_call
    async def add_state(self, values: dict[str, str], now: int) -> None:
        """Set the named values that are not set yet (processes starting together on a
        shared store agree on the first one's)."""
        rows = [{"name": n, "value": v, "updated_at": now} for n, v in values.items()]
        async with self.engine.begin() as conn:
            await conn.execute(self._insert(ProviderStateRow).on_conflict_do_nothing(index_elements=["name"]), rows)

    @store_call
    async def set_state(self, values: dict[str, str], now: int) -> None:
        rows = [{"name": n, "value": v, "updated_at": now} for n, v in values.items()]
        stmt = self._insert(ProviderStateRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at}
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt, rows)

