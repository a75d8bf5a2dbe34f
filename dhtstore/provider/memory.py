"""The provide list and the claims in memory: ``provider.api.ProvideList`` and
``provider.api.ClaimStore`` with the rules of their SQL implementations
(``providelist.ProvideListStore``, ``claims.SqlClaimStore``), for the simulation and
for a node that keeps nothing across restarts.

Nothing here awaits anything, so on ``dhtstore.sim``'s virtual-time loop a store call
takes no virtual time. Processes that share a list share one ``MemoryClaimStore`` and
one ``MemoryProvideList`` built on it.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ..kadkey import Key
from .api import (
    FAILING_AFTER_ATTEMPTS,
    AddResult,
    Claim,
    Counts,
    KeyRow,
    ListRow,
    RegionRow,
)
from .keyspace import Prefix, intersection

MAX_ERROR_CHARS = 1000  # as the SQL column keeps


class MemoryClaimStore:
    def __init__(self) -> None:
        self._claims: dict[Prefix, Claim] = {}

    async def claim(self, prefix: Prefix, owner: str, now: int, lease: int) -> bool:
        self._claims = {p: c for p, c in self._claims.items() if c.expires_at > now}
        if any(c.owner != owner and intersection(p, prefix) for p, c in self._claims.items()):
            return False
        for p in [p for p, c in self._claims.items() if c.owner == owner and intersection(p, prefix)]:
            del self._claims[p]
        self._claims[prefix] = Claim(prefix, owner, now, now + lease)
        return True

    async def renew(self, prefix: Prefix, owner: str, now: int, lease: int) -> bool:
        held = self._claims.get(prefix)
        if held is None or held.owner != owner:
            return False
        self._claims[prefix] = Claim(prefix, owner, held.claimed_at, now + lease)
        return True

    async def release(self, prefix: Prefix, owner: str) -> None:
        held = self._claims.get(prefix)
        if held is not None and held.owner == owner:
            del self._claims[prefix]

    async def live(self, now: int) -> list[Claim]:
        return sorted((c for c in self._claims.values() if c.expires_at > now), key=lambda c: c.prefix.first)

    def others(self, owner: str, now: int) -> list[Prefix]:
        """The prefixes under a live claim of someone other than ``owner``."""
        return [p for p, c in self._claims.items() if c.owner != owner and c.expires_at > now]


@dataclass(slots=True)
class _Entry:
    cid: str
    multihash: bytes
    kad: int
    added_at: int
    last_provided_at: int | None
    next_due_at: int
    attempts: int = 0
    last_error: str | None = None

    def row(self) -> ListRow:
        return ListRow(
            self.cid, self.multihash, self.added_at, self.last_provided_at, self.next_due_at, self.attempts, self.last_error
        )


class MemoryProvideList:
    def __init__(self, claims: MemoryClaimStore) -> None:
        self.claims = claims
        self._entries: dict[bytes, _Entry] = {}
        self._kads: list[int] = []  # sorted: a prefix is one bisected range
        self._by_kad: dict[int, _Entry] = {}
        # (next_due_at, kad) of every entry, and stale pairs of changed or removed ones,
        # dropped when they reach the top: the earliest due key in O(log n).
        self._due: list[tuple[int, int]] = []
        self._regions: dict[Prefix, RegionRow] = {}
        self._state: dict[str, tuple[str, int]] = {}  # name -> (value, updated_at)

    # --- the list ---------------------------------------------------------------

    async def contains(self, multihash: bytes) -> bool:
        return multihash in self._entries

    async def add(self, entries: Sequence[tuple[str, bytes]], now: int) -> AddResult:
        added = 0
        for cid, mh in entries:
            if mh in self._entries:
                continue
            entry = _Entry(cid, mh, Key.for_multihash(mh).value, now, None, now)
            self._entries[mh] = entry
            self._by_kad[entry.kad] = entry
            self._due.append((now, entry.kad))
            added += 1
        if added:
            self._kads = sorted(self._by_kad)
            heapq.heapify(self._due)
        return AddResult(added=added, present=len(entries) - added)

    async def remove(self, multihashes: Sequence[bytes]) -> int:
        removed = 0
        for mh in dict.fromkeys(multihashes):
            entry = self._entries.pop(mh, None)
            if entry is not None:
                del self._by_kad[entry.kad]
                removed += 1
        if removed:
            self._kads = sorted(self._by_kad)
        return removed

    async def rows(self, after: bytes | None = None, limit: int | None = None) -> AsyncIterator[ListRow]:
        keys = sorted(mh for mh in self._entries if after is None or mh > after)
        for mh in keys if limit is None else keys[:limit]:
            entry = self._entries.get(mh)
            if entry is not None:
                yield entry.row()

    async def counts(self, now: int, interval: int, late: int) -> Counts:
        stale_before = now - interval - late
        es = list(self._entries.values())
        return Counts(
            keys=len(es),
            pending=sum(e.last_provided_at is None for e in es),
            provided_within=sum(e.last_provided_at is not None and e.last_provided_at > now - interval for e in es),
            overdue=sum(e.next_due_at <= now for e in es),
            failing=sum(e.attempts >= FAILING_AFTER_ATTEMPTS for e in es),
            stale=sum(
                (e.last_provided_at < stale_before) if e.last_provided_at is not None else e.added_at < now - late
                for e in es
            ),
        )

    # --- the schedule ---------------------------------------------------------------

    def _set_due(self, e: _Entry, due: int) -> None:
        e.next_due_at = due
        heapq.heappush(self._due, (due, e.kad))

    def _earliest(self) -> tuple[int, int] | None:
        """``(next_due_at, kad)`` of the key due first."""
        heap = self._due
        if len(heap) > 2 * len(self._entries) + 1024:  # mostly stale: rebuild
            heap[:] = [(e.next_due_at, e.kad) for e in self._entries.values()]
            heapq.heapify(heap)
        while heap:
            due, kad = heap[0]
            e = self._by_kad.get(kad)
            if e is not None and e.next_due_at == due:
                return due, kad
            heapq.heappop(heap)
        return None

    def _earliest_unclaimed(self, owner: str, now: int) -> tuple[int, int] | None:
        first = self._earliest()
        others = self.claims.others(owner, now)
        if first is None or not any(p.contains(first[1]) for p in others):
            return first
        return min(
            ((e.next_due_at, e.kad) for e in self._entries.values() if not any(p.contains(e.kad) for p in others)),
            default=None,
        )

    async def next_due(self) -> int | None:
        first = self._earliest()
        return None if first is None else first[0]

    async def next_due_for(self, owner: str, now: int) -> int | None:
        first = self._earliest_unclaimed(owner, now)
        return None if first is None else first[0]

    async def last_due(self) -> int | None:
        return max((e.next_due_at for e in self._entries.values()), default=None)

    async def oldest_due(self, now: int, owner: str) -> tuple[int, int] | None:
        first = self._earliest_unclaimed(owner, now)
        if first is None or first[0] > now:
            return None
        at, kad = first
        return kad, at

    async def due_under(self, prefix: Prefix, now: int, owner: str) -> int | None:
        others = self.claims.others(owner, now)
        return next(
            (e.kad for e in self._under(prefix) if e.next_due_at <= now and not any(p.contains(e.kad) for p in others)),
            None,
        )

    def _under(self, prefix: Prefix) -> list[_Entry]:
        lo = bisect.bisect_left(self._kads, prefix.first)
        hi = bisect.bisect_right(self._kads, prefix.last)
        return [self._by_kad[k] for k in self._kads[lo:hi]]

    async def due_keys(
        self, prefix: Prefix, before: int, limit: int | None = None, provided_before: int | None = None
    ) -> list[KeyRow]:
        out: list[KeyRow] = []
        for e in self._under(prefix):
            if limit is not None and len(out) >= limit:
                break
            if e.next_due_at >= before:
                continue
            if provided_before is not None and e.last_provided_at is not None and e.last_provided_at >= provided_before:
                continue
            out.append(KeyRow(e.kad, e.multihash))
        return out

    async def count_due(self, prefix: Prefix, before: int, limit: int) -> int:
        return min(limit, sum(e.next_due_at < before for e in self._under(prefix)))

    async def realign(self, prefix: Prefix, before: int, provided_since: int, next_due: int) -> None:
        for e in self._under(prefix):
            if e.next_due_at < before and e.last_provided_at is not None and e.last_provided_at >= provided_since:
                self._set_due(e, next_due)

    async def any_key(self, prefix: Prefix) -> bytes | None:
        i = bisect.bisect_left(self._kads, prefix.first)
        if i < len(self._kads) and self._kads[i] <= prefix.last:
            return self._by_kad[self._kads[i]].multihash
        return None

    async def mark_provided(self, multihashes: Sequence[bytes], at: int, next_due: int) -> None:
        for mh in multihashes:
            e = self._entries.get(mh)
            if e is not None:
                e.last_provided_at, e.attempts, e.last_error = at, 0, None
                self._set_due(e, next_due)

    async def mark_failed(self, multihashes: Sequence[bytes], error: str, retry_at: int) -> None:
        for mh in multihashes:
            e = self._entries.get(mh)
            if e is not None:
                e.attempts, e.last_error = e.attempts + 1, error[:MAX_ERROR_CHARS]
                self._set_due(e, retry_at)

    async def max_attempts(self, multihashes: Sequence[bytes]) -> int:
        return max((e.attempts for mh in multihashes if (e := self._entries.get(mh)) is not None), default=0)

    # --- the regions -------------------------------------------------------------------

    async def regions(self) -> list[RegionRow]:
        return list(self._regions.values())

    async def replace_regions(self, covering: Prefix, regions: Sequence[RegionRow]) -> None:
        self._regions = {p: g for p, g in self._regions.items() if not covering.covers(p)}
        self._regions.update((g.prefix, g) for g in regions)

    # --- named state ---------------------------------------------------------------------

    async def get_state(self) -> dict[str, str]:
        return {name: value for name, (value, _) in self._state.items()}

    async def state_since(self, prefix: str, since: int) -> dict[str, str]:
        return {n: v for n, (v, at) in self._state.items() if n.startswith(prefix) and at >= since}

    async def add_state(self, values: dict[str, str], now: int) -> None:
        for name, value in values.items():
            self._state.setdefault(name, (value, now))

    async def set_state(self, values: dict[str, str], now: int) -> None:
        self._state.update((name, (value, now)) for name, value in values.items())
