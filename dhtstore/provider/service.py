"""The provide list as a ``provider.api.Provider`` over the store alone.

The CLI uses this directly (it edits the list beside a running node, which polls for
changes); the node's ``Reprovider`` extends it with the sweep. Status figures that
only running sweeps know come from the store: the slices being provided now from
``reprovide_claims``, each process's throughput from ``provider_state``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime

from ..amino import REPROVIDE_INTERVAL
from .api import (
    FAILING_AFTER_ATTEMPTS,
    AddResult,
    ClaimStore,
    KeyState,
    ListRow,
    ProvideEntry,
    ProvideError,
    ProvideList,
    ProvideStatus,
)
from .cids import multihash_of

# provider_state names
STATE_ORDER = "order_key"
STATE_CYCLE_START = "cycle_start"
STATE_PREFIX_LEN = "prefix_len"
STATE_THROUGHPUT = "keys_per_second/"  # + the process's peer id
STATE_INTERVAL = "interval_seconds"


def throughput_state(owner: str) -> str:
    return STATE_THROUGHPUT + owner


def parse_cids(cids: Iterable[str | bytes]) -> list[tuple[str, bytes]]:
    """``(cid text, multihash)`` for each item; raises ProvideError naming the first bad one."""
    out = []
    for item in cids:
        mh = multihash_of(item.strip() if isinstance(item, str) else item)
        out.append((item.strip() if isinstance(item, str) else _display(mh), mh))
    return out


def _display(mh: bytes) -> str:
    from ..multihash import cid_string

    return cid_string(mh)


def _time(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def entry_state(row: ListRow, now: float) -> KeyState:
    if row.attempts >= FAILING_AFTER_ATTEMPTS:
        return KeyState.FAILING
    if row.last_provided_at is None:
        return KeyState.PENDING
    if row.next_due_at <= now:
        return KeyState.OVERDUE
    return KeyState.PROVIDED


class ProvideListService:
    def __init__(
        self,
        store: ProvideList,
        claims: ClaimStore,
        *,
        interval: float = REPROVIDE_INTERVAL.total_seconds(),
        clock: Callable[[], float] = time.time,
    ):
        if interval <= 0:
            raise ValueError("the reprovide interval must be positive")
        self.store = store
        self.claims = claims
        self.interval = interval
        self.clock = clock

    @classmethod
    async def for_store(
        cls, store: ProvideList, claims: ClaimStore, clock: Callable[[], float] = time.time
    ) -> ProvideListService:
        """A service with the interval the node last ran with (the default if it never ran)."""
        recorded = (await store.get_state()).get(STATE_INTERVAL)
        interval = float(recorded) if recorded else REPROVIDE_INTERVAL.total_seconds()
        return cls(store, claims, interval=interval, clock=clock)

    @property
    def behind_after(self) -> float:
        """Work overdue by more than this means the node is not keeping up (1 h at 22 h, go's max reprovide delay)."""
        return self.interval / 22

    async def start_provide(self, cids: Iterable[str | bytes]) -> AddResult:
        return await self.add_entries(parse_cids(cids))

    async def add_entries(self, entries: Sequence[tuple[str, bytes]]) -> AddResult:
        return await self.store.add(entries, int(self.clock()))

    async def stop_provide(self, cids: Iterable[str | bytes]) -> int:
        return await self.store.remove([mh for _, mh in parse_cids(cids)])

    async def provide_list(self, after: bytes | None = None, limit: int | None = None) -> AsyncIterator[ProvideEntry]:
        now = self.clock()
        async for row in self.store.rows(after, limit):
            yield ProvideEntry(
                cid=row.cid,
                multihash=row.multihash,
                state=entry_state(row, now),
                added_at=datetime.fromtimestamp(row.added_at, UTC),
                last_provided_at=_time(row.last_provided_at),
                next_due_at=datetime.fromtimestamp(row.next_due_at, UTC),
                attempts=row.attempts,
                last_error=row.last_error,
            )

    async def status(self) -> ProvideStatus:
        now = self.clock()
        counts = await self.store.counts(int(now), int(self.interval), int(self.behind_after))
        state = await self.store.get_state()
        regions = await self.store.regions()
        oldest = await self.store.next_due()
        last_due = await self.store.last_due()
        claims = await self.claims.live(int(now))
        # The processes that provided within the interval work side by side: their rates add up.
        rates = await self.store.state_since(STATE_THROUGHPUT, int(now - self.interval))
        throughput = sum(float(v or 0) for v in rates.values())
        expected_end: float | None = None
        if counts.keys:
            backlog_end = now + counts.overdue / throughput if counts.overdue and throughput > 0 else None
            expected_end = max(filter(None, (last_due, backlog_end)), default=None)
        # Behind: work overdue by more than the slack, keys whose records may have
        # expired, or a backlog that will not clear within one interval.
        behind = (
            (oldest is not None and oldest < now - self.behind_after)
            or counts.stale > 0
            or (expected_end is not None and expected_end - now > self.interval)
        )
        cycle_start = state.get(STATE_CYCLE_START)
        return ProvideStatus(
            keys=counts.keys,
            pending=counts.pending,
            provided_within_interval=counts.provided_within,
            overdue=counts.overdue,
            failing=counts.failing,
            regions=len(regions),
            current_region=", ".join(str(c.prefix) for c in claims) or None,
            cycle_started_at=_time(int(cycle_start)) if cycle_start else None,
            expected_cycle_end=_time(int(expected_end)) if expected_end is not None else None,
            falling_behind=behind,
            interval_seconds=self.interval,
        )


__all__ = ["ProvideError", "ProvideListService", "parse_cids"]
