"""One announcement waiting in the group commit, and the callers waiting for it."""

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
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None  # the store failed: maybe not stored
    refused: QuotaExceeded | None = None  # over a quota: not stored


def record_rows(batch: list[PendingRecord]) -> list[tuple[bytes, bytes, str, int, int]]:
    """The batch's ``provider_records`` rows: key_mh, peer_id, key_b58, received_at, expires_at."""
    return [(p.key, p.peer, base58btc(p.key), p.received_at, p.expires_at) for p in batch]
