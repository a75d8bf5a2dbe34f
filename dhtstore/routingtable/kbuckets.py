"""A k-bucket routing table: bucket i holds peers whose key shares exactly i leading
bits with ours (libp2p kad-dht spec, go-libp2p-kbucket).

Seniority: a full bucket keeps its peers; a newcomer takes the place of a peer only
after that peer failed a liveness check (``mark_failed``). Long-lived peers are the
likeliest to stay online, and an attacker cannot flush a bucket by offering new ids.

``local_closest_peers`` is exact without scanning the table: the table also keeps its
peers' keys in a sorted list, which ``xorsearch.closest_keys`` descends bit by bit.
"""

from __future__ import annotations

import bisect
from collections import Counter
from hashlib import sha256

from .. import amino
from ..kadkey import BITS, Key
from ..peerid import PeerId
from ..types import PeerInfo
from .ipgroups import ip_groups
from .xorsearch import closest_keys


class _Entry:
    __slots__ = ("info", "key", "cpl", "last_useful", "failed", "groups")

    def __init__(self, info: PeerInfo, key: int, cpl: int, now: float, groups: frozenset[bytes]):
        self.info = info
        self.key = key
        self.cpl = cpl
        self.last_useful = now
        self.failed = False
        self.groups = groups


class KBucketTable:
    """The routing table of one node. Not thread-safe; owned by one event loop."""

    def __init__(
        self,
        local_key: Key,
        *,
        bucket_size: int = amino.BUCKET_SIZE,
        ip_diversity: bool = False,
        max_per_group: int = amino.MAX_PEERS_PER_IP_GROUP,
        max_per_group_per_bucket: int = amino.MAX_PEERS_PER_IP_GROUP_PER_CPL,
    ):
        self._local_key = local_key
        self._local = local_key.value
        self._k = bucket_size
        # Buckets 0 … the deepest non-empty one; deeper ones do not exist yet.
        self._buckets: list[dict[PeerId, _Entry]] = []
        self._entries: dict[PeerId, _Entry] = {}
        self._sorted_keys: list[int] = []  # every entry's key, ascending
        self._by_key: dict[int, _Entry] = {}
        self._ip_diversity = ip_diversity
        self._max_group = max_per_group
        self._max_group_bucket = max_per_group_per_bucket
        self._group_count: Counter[bytes] = Counter()
        self._bucket_group_count: Counter[tuple[int, bytes]] = Counter()

    @property
    def local_key(self) -> Key:
        return self._local_key

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries

    def get(self, peer_id: PeerId) -> PeerInfo | None:
        entry = self._entries.get(peer_id)
        return entry.info if entry else None

    def peers(self) -> list[PeerInfo]:
        return [e.info for e in self._entries.values()]

    def add(self, peer: PeerInfo, now: float, *, seen_from: bytes | None = None) -> bool:
        entry = self._entries.get(peer.peer_id)
        if entry is not None:
            if peer.addrs and peer.addrs != entry.info.addrs:
                entry.info = peer
            return True
        key = int.from_bytes(sha256(peer.peer_id.to_bytes()).digest(), "big")  # Key.for_peer, inlined: hot
        if key == self._local:
            return False
        cpl = BITS - (key ^ self._local).bit_length()
        bucket = self._buckets[cpl] if cpl < len(self._buckets) else {}
        groups = ip_groups((seen_from,) if seen_from is not None else peer.addrs) if self._ip_diversity else frozenset()
        evicted = None
        if len(bucket) >= self._k:
            evicted = next((e for e in bucket.values() if e.failed), None)
            if evicted is None:
                return False
            self._drop(evicted)
        if groups and not self._groups_have_room(cpl, groups):
            if evicted is not None:
                self._insert(evicted)
            return False
        self._insert(_Entry(peer, key, cpl, now, groups))
        return True

    def remove(self, peer_id: PeerId) -> bool:
        entry = self._entries.get(peer_id)
        if entry is None:
            return False
        self._drop(entry)
        return True

    def mark_useful(self, peer_id: PeerId, now: float) -> None:
        entry = self._entries.get(peer_id)
        if entry is not None:
            entry.last_useful = now
            entry.failed = False

    def mark_failed(self, peer_id: PeerId) -> None:
        entry = self._entries.get(peer_id)
        if entry is not None:
            entry.failed = True

    def last_useful(self, peer_id: PeerId) -> float | None:
        entry = self._entries.get(peer_id)
        return entry.last_useful if entry else None

    def local_closest_peers(self, key: Key, n: int) -> list[PeerInfo]:
        if n <= 0:
            return []
        by_key = self._by_key
        return [by_key[k].info for k in closest_keys(self._sorted_keys, key.value, n)]

    def _groups_have_room(self, cpl: int, groups: frozenset[bytes]) -> bool:
        return all(
            self._group_count[g] < self._max_group and self._bucket_group_count[(cpl, g)] < self._max_group_bucket
            for g in groups
        )

    def _insert(self, entry: _Entry) -> None:
        while len(self._buckets) <= entry.cpl:
            self._buckets.append({})
        self._buckets[entry.cpl][entry.info.peer_id] = entry
        self._entries[entry.info.peer_id] = entry
        self._by_key[entry.key] = entry
        bisect.insort(self._sorted_keys, entry.key)
        for g in entry.groups:
            self._group_count[g] += 1
            self._bucket_group_count[(entry.cpl, g)] += 1

    def _drop(self, entry: _Entry) -> None:
        del self._buckets[entry.cpl][entry.info.peer_id]
        del self._entries[entry.info.peer_id]
        del self._by_key[entry.key]
        del self._sorted_keys[bisect.bisect_left(self._sorted_keys, entry.key)]
        for g in entry.groups:
            self._group_count[g] -= 1
            self._bucket_group_count[(entry.cpl, g)] -= 1
        while self._buckets and not self._buckets[-1]:
            self._buckets.pop()
