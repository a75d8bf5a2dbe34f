"""The provider store's two caches: provider sets per key (an LRU: go keeps 256 keys)
and addresses per provider.

Both only ever hold committed data. The writer updates them after each commit
(``committed``), and a read fills them only with what no commit touched while the read
ran: it takes ``mark()`` before its query and hands it back, and the caches remember
which keys and peers the last RECENT_COMMITS commits touched.

On a store that other processes write too (``shared_ttl`` given), an entry is used
for at most ``shared_ttl`` seconds, so another process's write is seen within that
time. A stale provider set is kept, though, to answer from while the store is down.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from cachetools import LRUCache, TTLCache

from ..data.addrs import unpack_addrs
from .pending import PendingRecord
from .validation import PROVIDER_ADDR_TTL_S

RECENT_COMMITS = 64  # commits remembered to tell whether a read raced a write

Providers = dict[bytes, tuple[int, int]]  # peer -> (received_at, expires_at)
Addrs = tuple[tuple[bytes, ...], int]  # (addresses, expire_at)


@dataclass(slots=True)
class _CachedSet:
    providers: Providers
    fetched_at: float = field(default_factory=time.monotonic)  # for a shared store's TTL


class ProviderCaches:
    def __init__(self, set_size: int, addr_size: int, shared_ttl: float | None):
        self._sets: LRUCache[bytes, _CachedSet] = LRUCache(set_size)
        self._set_ttl = shared_ttl
        self._addrs: LRUCache[bytes, Addrs] | TTLCache[bytes, Addrs] = (
            TTLCache(addr_size, ttl=shared_ttl, timer=time.monotonic) if shared_ttl is not None
            else LRUCache(addr_size)
        )
        self._commits = 0
        self._recent: deque[tuple[int, frozenset[bytes]]] = deque(maxlen=RECENT_COMMITS)

    # -- provider sets ------------------------------------------------------------

    def fresh_set(self, key: bytes) -> Providers | None:
        """The cached providers of ``key`` if they are fresh enough to answer from."""
        cached = self._sets.get(key)
        if cached is not None and (self._set_ttl is None or time.monotonic() - cached.fetched_at < self._set_ttl):
            return cached.providers
        return None

    def any_set(self, key: bytes) -> Providers | None:
        """The cached providers of ``key`` however old: the answer while the store is down."""
        cached = self._sets.get(key)
        return None if cached is None else cached.providers

    def mark(self) -> int:
        """Take before a read's query; hand back to ``fill_set``/``fill_addrs``."""
        return self._commits

    def fill_set(self, mark: int, key: bytes, providers: Providers, addrs: Iterable[tuple[bytes, bytes, int]]) -> None:
        """Cache a read's providers of ``key`` and their ``addrs`` (peer, packed addresses,
        expire_at), what no commit changed since ``mark``. A stale set of the key goes
        either way: this read supersedes it."""
        self._sets.pop(key, None)
        touched = self._touched_since(mark)
        if touched is None:
            return
        for peer, blob, expire_at in addrs:
            if peer not in touched:
                self._addrs[peer] = (unpack_addrs(blob), expire_at)
        if providers and key not in touched:  # as go: only non-empty sets are cached
            self._sets[key] = _CachedSet(providers)

    # -- addresses ----------------------------------------------------------------

    def known_addrs(self, peers: Iterable[bytes], now: int) -> tuple[dict[bytes, tuple[bytes, ...]], list[bytes]]:
        """The cached unexpired addresses of ``peers``, and the peers not cached."""
        found: dict[bytes, tuple[bytes, ...]] = {}
        missing = []
        for peer in peers:
            entry = self._addrs.get(peer)
            if entry is None:
                missing.append(peer)
            elif entry[1] > now:
                found[peer] = entry[0]
        return found, missing

    def fill_addrs(self, mark: int, entries: Iterable[tuple[bytes, Addrs]]) -> None:
        """Cache a read's addresses (peer, entry), those no commit changed since ``mark``."""
        touched = self._touched_since(mark)
        if touched is None:
            return
        for peer, entry in entries:
            if peer not in touched:
                self._addrs[peer] = entry

    # -- writes and expiry --------------------------------------------------------

    def committed(self, batch: list[PendingRecord]) -> None:
        """The batch is committed: update what is cached, and remember what it touched."""
        self._commits += 1
        self._recent.append((self._commits, frozenset(p.key for p in batch) | {p.peer for p in batch}))
        for p in batch:
            cached = self._sets.get(p.key)
            if cached is not None:
                cached.providers[p.peer] = (p.received_at, p.expires_at)
            if p.addrs:
                self._addrs[p.peer] = (p.addrs, p.received_at + PROVIDER_ADDR_TTL_S)

    def drop_expired(self, now: int) -> None:
        """Reads filter expired entries themselves; this frees their memory."""
        for cached in self._sets.values():
            for peer in [p for p, (_, e) in cached.providers.items() if e <= now]:
                del cached.providers[peer]

    def _touched_since(self, mark: int) -> set[bytes] | None:
        """Keys and peers written by commits after ``mark``; None if we no longer know."""
        if self._recent and self._recent[0][0] > mark + 1:
            return None
        touched: set[bytes] = set()
        for n, ids in self._recent:
            if n > mark:
                touched |= ids
        return touched
