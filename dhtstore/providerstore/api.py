"""Provider records: who provides which multihash, for how long.

A provider record lives 48 h from its last announcement (PROVIDE_VALIDITY); the
provider's addresses live 24 h (PROVIDER_ADDR_TTL) and are kept with the peer, not the
record, as go does. Re-announcing a (key, provider) refreshes it; it never duplicates.

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
        over 80 bytes, or an address list over the size limit; nothing is written then.
        ``ttl`` (default and maximum: PROVIDE_VALIDITY, 48 h) shortens the record's life.
        StoreUnavailable: the record was maybe not stored.
        """
        ...

    async def add_providers(self, records: Sequence[Announcement], *, ttl: timedelta | None = None) -> None:
        """``add_provider`` for several records at once: they share one wait for their
        commit (a kad stream's run of ADD_PROVIDERs). Checked first, all of them: a
        ValueError for any means none is written."""
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
