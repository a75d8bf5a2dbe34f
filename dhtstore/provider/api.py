"""The provider module's presentation tier: what the node's own provide list does.

The provide list is the set of multihashes this node announces as a provider. Each
entry is a promise: once ``start_provide`` returns, the key is stored and will be
provided promptly and then reprovided every interval until ``stop_provide``, restart
after restart. Entries are keyed by multihash (CIDv0 and CIDv1 of one multihash are one
DHT key, hence one entry); the CID as first given is kept for display.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

# After this many failed attempts in a row a key is reported as failing (it is still
# retried with backoff: a failing key is never dropped).
FAILING_AFTER_ATTEMPTS = 3


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

    async def stop_provide(self, cids: Iterable[str | bytes]) -> int:
        """Remove CIDs from the list; they are never reprovided again. Returns how many were removed."""
        ...

    def provide_list(self, after: bytes | None = None, limit: int | None = None) -> AsyncIterator[ProvideEntry]:
        """Stream the list in multihash order, from the first multihash greater than ``after``."""
        ...

    async def status(self) -> ProvideStatus: ...
