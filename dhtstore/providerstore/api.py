"""Provider records: who provides which multihash, for how long.

A provider record lives 48 h from its last announcement (PROVIDE_VALIDITY); the
provider's addresses live 24 h (PROVIDER_ADDR_TTL) and are kept with the peer, not the
record, as go does. Re-announcing a (key, provider) refreshes it; it never duplicates.

Quotas (``ProviderQuotas``) bound what hostile announcers can make a store hold:
providers per key (ipfs/specs PR #537 ``maxProvidersPerKey``: when a key is full, a new
provider is refused but a re-announcement is always taken, so records stay fresh),
records per provider peer, and records in all. A refused announcement raises
``QuotaExceeded``; nothing is written for it.

A store on a database raises ``dhtstore.errors.StoreUnavailable`` when the database
fails (and ``available`` turns False until it answers again); an in-memory store never
does. The lifecycle (``async with`` for the SQL store's writer and sweep) belongs to the
implementation, which only the node picks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from ..peerid import PeerId
from ..types import PeerInfo


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    key: bytes  # multihash
    provider: PeerInfo  # peer id and its unexpired known addresses
    received_at: datetime
    expires_at: datetime


Announcement = tuple[bytes, PeerId, tuple[bytes, ...]]
"""A provider record to store: (key, provider, the provider's addresses)."""


@dataclass(frozen=True, slots=True)
class ProviderQuotas:
    """Limits on live provider records; the defaults never refuse an honest provider.

    ``per_provider``: a provider of 100M CIDs, in a network of ~10k servers storing each
    record on the k = 20 closest, sends each server about 100M x 20 / 10k = 200k keys:
    the default is 10x that (a provider of 1 billion CIDs still fits).
    ``total``: a public Amino server receives ~1.5k records a second; even if every one
    were new, 48 h of them are 259M records: the default is above that.
    ``per_key``: a GET_PROVIDERS reply carries at most ~20 providers; 1000 leaves a
    popular key plenty to choose from while one key cannot grow without bound.
    """

    per_key: int = 1000
    per_provider: int = 2_000_000
    total: int = 300_000_000


class QuotaExceeded(ValueError):
    """An announcement refused by a quota: ``reason`` is "key", "provider" or "total"."""

    def __init__(self, reason: str, limit: int):
        super().__init__(f"provider quota exceeded: {reason} (limit {limit})")
        self.reason = reason
        self.limit = limit


@dataclass(frozen=True, slots=True)
class ProviderStoreStats:
    records: int
    keys: int
    providers: int
    expiring_within_hour: int  # live records expiring within data.stats.EXPIRING_WINDOW


@runtime_checkable
class ProviderStore(Protocol):
    @property
    def available(self) -> bool:
        """False from a failed store operation until the store answers again (the node's
        status shows it); reads meanwhile answer from what the store has cached."""
        ...

    async def add_provider(
        self, key: bytes, provider: PeerId, addrs: tuple[bytes, ...] = (), *, ttl: timedelta | None = None
    ) -> None:
        """Record that ``provider`` provides ``key``; returns once the record is durable.

        Raises ValueError (naming the problem) for a key that is not a multihash or is
        over 80 bytes, or an address list over the size limit, and QuotaExceeded (a
        ValueError) for a new record over a quota; nothing is written then.
        ``ttl`` (default and maximum: PROVIDE_VALIDITY, 48 h) shortens the record's life.
        StoreUnavailable: the record was maybe not stored.
        """
        ...

    async def add_providers(self, records: Sequence[Announcement], *, ttl: timedelta | None = None) -> list[QuotaExceeded | None]:
        """``add_provider`` for several records at once: they share one wait for their
        commit (a kad stream's run of ADD_PROVIDERs). Checked first, all of them: a
        ValueError for any means none is written. Returns, per record, None (stored) or
        the QuotaExceeded that refused it."""
        ...

    async def get_providers(self, key: bytes, limit: int | None = None) -> list[ProviderRecord]:
        """Unexpired providers of ``key`` (at most ``limit``, in random order, as go
        spreads the load over them) with their unexpired addresses."""
        ...

    async def sweep_expired(self) -> int:
        """Delete expired records (in batches); return how many were deleted."""
        ...

    async def stats(self) -> ProviderStoreStats:
        """Counts over the unexpired records."""
        ...
