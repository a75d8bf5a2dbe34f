"""One announcement waiting in the group commit, and the callers waiting for it.

A caller's records share one ``Waiter`` (one event however many records it queued):
a kad stream hands over a run of ADD_PROVIDERs at once."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from .api import QuotaExceeded
from .validation import base58btc


@dataclass(slots=True)
class PendingRecord:
    """A queued (key, provider) upsert; re-announces while it is queued coalesce into it."""

    key: bytes
    peer: bytes
    peer_text: str  # the provider's peer id in base58btc, for the ``peers`` row
    addrs: tuple[bytes, ...]
    received_at: int
    expires_at: int
    waiters: list[tuple[Waiter, int]] = field(default_factory=list)  # (caller, its record's index), per queueing
    error: BaseException | None = None  # the store failed: maybe not stored
    refused: QuotaExceeded | None = None  # over a quota: not stored

    def finish(self) -> None:
        """Committed, refused or failed: tell every caller waiting for it."""
        for waiter, index in self.waiters:
            waiter.finished(index, self.error, self.refused)


class Waiter:
    """One caller's wait for the records it queued."""

    __slots__ = ("done", "error", "refused", "remaining")

    def __init__(self, records: int):
        self.remaining = records
        self.done = anyio.Event()
        self.error: BaseException | None = None  # the first failure among its records
        self.refused: list[QuotaExceeded | None] = [None] * records  # per record, in the caller's order

    def finished(self, index: int, error: BaseException | None, refused: QuotaExceeded | None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.refused[index] = refused
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


def record_rows(batch: list[PendingRecord]) -> list[tuple[bytes, bytes, str, int, int]]:
    """The batch's ``provider_records`` rows: key_mh, peer_id, key_b58, received_at, expires_at."""
    return [(p.key, p.peer, base58btc(p.key), p.received_at, p.expires_at) for p in batch]
