"""The provider module's contracts: what the node's own provide list does (``Provider``),
the sweep's settings and reports, and the two stores under it (``ProvideList``,
``ClaimStore``; in SQL in ``providelist`` and ``claims``, in memory in ``memory``).

The provide list is the set of multihashes this node announces as a provider. Each
entry is a promise: once ``start_provide`` returns, the key is stored and will be
provided promptly and then reprovided every interval until ``stop_provide``, restart
after restart. Entries are keyed by multihash (CIDv0 and CIDv1 of one multihash are one
DHT key, hence one entry); the CID as first given is kept for display.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..amino import BUCKET_SIZE, REPROVIDE_INTERVAL, SWEEP_SEND_TIMEOUT
from .keyspace import Prefix

# After this many failed attempts in a row a key is reported as failing (it is still
# retried with backoff: a failing key is never dropped).
FAILING_AFTER_ATTEMPTS = 3
CLAIM_LEASE = 300.0  # seconds: a dead process's slice is taken over this long after its last renewal


class KeyState(enum.Enum):
    PENDING = "pending"  # never provided yet
    PROVIDED = "provided"  # provided, next reprovide not yet due
    OVERDUE = "overdue"  # its reprovide time has passed
    FAILING = "failing"  # the last FAILING_AFTER_ATTEMPTS attempts failed


@dataclass(frozen=True, slots=True)
class ProvideEntry:
    cid: str
    multihash: bytes
    state: KeyState
    added_at: datetime
    last_provided_at: datetime | None
    next_due_at: datetime
    attempts: int  # failed attempts since the last success
    last_error: str | None


@dataclass(frozen=True, slots=True)
class AddResult:
    added: int  # new entries
    present: int  # already in the list (possibly under another CID version)


@dataclass(frozen=True, slots=True)
class ProvideStatus:
    keys: int  # entries in the provide list
    pending: int  # never provided yet
    provided_within_interval: int  # last provided less than one interval ago
    overdue: int  # due before now (pending keys included)
    failing: int
    regions: int  # keyspace regions in the schedule
    current_region: str | None  # the slices being provided now, by any process of the store ("01*, 110*")
    cycle_started_at: datetime | None
    expected_cycle_end: datetime | None  # when every key will have been provided once more
    falling_behind: bool  # the node cannot keep up with the interval
    interval_seconds: float


class ProvideError(ValueError):
    """A CID or multihash that cannot be provided (malformed, or a multihash over 80 bytes)."""


@runtime_checkable
class Provider(Protocol):
    async def start_provide(self, cids: Iterable[str | bytes]) -> AddResult:
        """Add CIDs (text, or multihash bytes) to the provide list; they are provided promptly.

        Validates every item first and raises ProvideError naming the first bad one;
        nothing is written then.
        """
        ...

    async def add_entries(self, entries: Sequence[tuple[str, bytes]]) -> AddResult:
        """``start_provide`` for ``(cid text, multihash)`` pairs already checked with
        ``cids.multihash_of`` (a bulk import parses each line once)."""
        ...

    async def stop_provide(self, cids: Iterable[str | bytes]) -> int:
        """Remove CIDs from the list; they are never reprovided again. Returns how many were removed."""
        ...

    def provide_list(self, after: bytes | None = None, limit: int | None = None) -> AsyncIterator[ProvideEntry]:
        """Stream the list in multihash order, from the first multihash greater than ``after``."""
        ...

    async def status(self) -> ProvideStatus: ...


# --- the sweep ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepConfig:
    interval: float = REPROVIDE_INTERVAL.total_seconds()
    replication: int = BUCKET_SIZE
    max_peers_in_flight: int = 20  # go: maxProvideConnsPerWorker
    send_timeout: float = SWEEP_SEND_TIMEOUT  # per ADD_PROVIDER and per confirming FIND_NODE
    min_reachable_ratio: float = 0.2  # go: minimalRegionReachablePeersRatio
    individual_threshold: int = 2  # go: individualProvideThreshold
    max_failure_streak: int = 2  # go: maxConsecutiveProvideFailuresAllowed
    max_exploration_lookups: int = 64  # go: maxExplorationPrefixSearches
    max_stale_lookups: int = 2  # go: maxConsecutiveNoFreshPeers
    retry_after: float = 300.0  # go retries failed work every 5 min; we double from there
    max_retry_after: float = 3600.0
    claim_lease: float = CLAIM_LEASE
    # A confirming FIND_NODE after this many ADD_PROVIDERs to one peer: its backlog stays
    # short (servers rate-limit each peer, ours to 200 requests/s), so it is answered in time.
    confirm_every: int = 256
    claim_batch: int = 2_000  # a region with more due keys than this is shared out in slices
    # Sends of a key per cycle whose records went out but too few servers confirmed them:
    # the first and two retries (5 and 10 min later), then the key waits for its next
    # turn. go counts a written ADD_PROVIDER as provided (it confirms nothing), so it sends
    # a key once per cycle to each server that took it, retrying a region only when more
    # than 80% of its sends failed; we send at most 3x that against servers that never
    # confirm (rust-libp2p on a PING, a broken peer), and only the first cycle of such a
    # streak: from its third attempt on, a key is reported failing and goes out once per
    # turn, as go's. Attempts that reached no server at all (offline, lookups failed)
    # cost the network nothing and keep backing off, so a node back online catches up
    # at once, as go's catch-up of failed regions does.
    max_sends_per_cycle: int = 3

    @property
    def grace(self) -> float:
        """A region whose turn is this close is provided now rather than twice."""
        return self.interval / 128

    @property
    def max_delay(self) -> float:
        """How far past one interval a key's next provide may fall (1 h at 22 h, go's
        ``DefaultMaxReprovideDelay``); records live 48 h, far longer."""
        return self.interval / 22


@dataclass(frozen=True, slots=True, kw_only=True)
class VisitReport:
    """One visit: what was sent and what it cost."""

    prefix: Prefix  # the slice visited (or the region, for keys provided one by one)
    keys: int = 0
    provided: int = 0  # keys whose region reached enough servers
    unconfirmed: int = 0  # keys sent to servers of which too few confirmed them (sent, not unsent)
    deferred: int = 0  # of those, keys whose sends for this cycle are used up: left to their next turn
    failed: int = 0  # keys that reached no server
    peers: int = 0
    peers_reached: int = 0  # servers that confirmed their records
    peers_unconfirmed: int = 0  # servers that took records but did not confirm them
    lookups: int = 0
    messages: int = 0
    individual: bool = False
    error: str | None = None


# --- the stores -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One provided key, as the sweep needs it."""

    kad: int  # the Kademlia key as an int
    multihash: bytes


@dataclass(frozen=True, slots=True)
class ListRow:
    cid: str
    multihash: bytes
    added_at: int
    last_provided_at: int | None
    next_due_at: int
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class RegionRow:
    prefix: Prefix
    next_due_at: int
    last_run_at: int | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Counts:
    keys: int
    pending: int
    provided_within: int
    overdue: int
    failing: int
    stale: int  # not provided for longer than the interval (plus slack): its records may be gone


@dataclass(frozen=True, slots=True)
class Claim:
    prefix: Prefix
    owner: str
    claimed_at: int
    expires_at: int


class ClaimStore(Protocol):
    """Which process of a shared provide list provides which slice now (``provider.claims``).

    A claim is a lease on a prefix: no two owners hold overlapping live claims. Every
    method raises ``dhtstore.errors.StoreUnavailable`` when the store cannot be reached.
    """

    async def claim(self, prefix: Prefix, owner: str, now: int, lease: int) -> bool:
        """Claim ``prefix`` for ``owner`` until ``now + lease``; False if another owner
        holds a live claim overlapping it. The owner's own claims overlapping it are replaced."""
        ...

    async def renew(self, prefix: Prefix, owner: str, now: int, lease: int) -> bool:
        """Extend the owner's claim to ``now + lease``; False if it is gone (expired and taken over)."""
        ...

    async def release(self, prefix: Prefix, owner: str) -> None: ...

    async def live(self, now: int) -> list[Claim]:
        """Every claim not yet expired at ``now``, in keyspace order."""
        ...


class ProvideList(Protocol):
    """The provide list and the reprovide schedule: what the sweep, the reprovider, the
    service (and so the CLI) and the node read and write. Times are integer epoch
    seconds. ``owner`` arguments name the calling process: keys under another owner's
    live claim are left out. Every method raises ``dhtstore.errors.StoreUnavailable``
    when the store cannot be reached."""

    # the list
    async def contains(self, multihash: bytes) -> bool: ...

    async def add(self, entries: Sequence[tuple[str, bytes]], now: int) -> AddResult:
        """Add ``(cid, multihash)`` pairs, due now; a multihash already listed is left as it is."""
        ...

    async def remove(self, multihashes: Sequence[bytes]) -> int: ...

    def rows(self, after: bytes | None = None, limit: int | None = None) -> AsyncIterator[ListRow]:
        """The list in multihash order, from the first multihash greater than ``after``."""
        ...

    async def counts(self, now: int, interval: int, late: int) -> Counts:
        """Figures for the status; ``late``: how long past the interval a key counts as stale."""
        ...

    # the schedule
    async def next_due(self) -> int | None:
        """The earliest ``next_due_at`` of the list."""
        ...

    async def next_due_for(self, owner: str, now: int) -> int | None:
        """The earliest ``next_due_at`` among the keys ``owner`` may provide."""
        ...

    async def last_due(self) -> int | None:
        """The latest ``next_due_at``: when the current cycle will be through."""
        ...

    async def oldest_due(self, now: int, owner: str) -> tuple[int, int] | None:
        """``(kad key, next_due_at)`` of the key overdue longest that ``owner`` may provide, if any is due at ``now``."""
        ...

    async def due_under(self, prefix: Prefix, now: int, owner: str) -> int | None:
        """The first Kademlia key under ``prefix`` due at ``now`` that ``owner`` may provide, if any."""
        ...

    async def due_keys(
        self, prefix: Prefix, before: int, limit: int | None = None, provided_before: int | None = None
    ) -> list[KeyRow]:
        """Keys under ``prefix`` due before ``before`` (and, if given, not provided since
        ``provided_before``), sorted by Kademlia key."""
        ...

    async def count_due(self, prefix: Prefix, before: int, limit: int) -> int:
        """How many keys under ``prefix`` are due before ``before``, counting at most ``limit``."""
        ...

    async def realign(self, prefix: Prefix, before: int, provided_since: int, next_due: int) -> None:
        """Move keys under ``prefix`` due before ``before`` but provided since
        ``provided_since`` to ``next_due``, without providing them again."""
        ...

    async def any_key(self, prefix: Prefix) -> bytes | None:
        """A multihash of the list under ``prefix``, if any."""
        ...

    async def mark_provided(self, multihashes: Sequence[bytes], at: int, next_due: int) -> None:
        """Provided at ``at``: due again at ``next_due``, attempts and error cleared."""
        ...

    async def mark_failed(self, multihashes: Sequence[bytes], error: str, retry_at: int) -> None:
        """One more failed attempt: due again at ``retry_at``, ``error`` kept."""
        ...

    async def max_attempts(self, multihashes: Sequence[bytes]) -> int: ...

    # the regions
    async def regions(self) -> list[RegionRow]: ...

    async def replace_regions(self, covering: Prefix, regions: Sequence[RegionRow]) -> None:
        """Put ``regions`` (which tile ``covering``) in place of every region under ``covering``."""
        ...

    # named state
    async def get_state(self) -> dict[str, str]: ...

    async def state_since(self, prefix: str, since: int) -> dict[str, str]:
        """The named values starting with ``prefix`` updated at or after ``since``."""
        ...

    async def add_state(self, values: dict[str, str], now: int) -> None:
        """Set the named values that are not set yet."""
        ...

    async def set_state(self, values: dict[str, str], now: int) -> None: ...
