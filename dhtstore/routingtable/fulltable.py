"""The full routing table: every DHT server of the network, kept in SQL (``network_peers``).

go-libp2p-kad-dht's ``fullrt`` holds the crawled network in memory only and replaces it
wholesale after each crawl, so a restart starts from the bootstrap peers. Here the
store is the table's truth and a compact index lives in memory:

- a sorted list of the peers' Kademlia keys (ints), which ``xorsearch.closest_keys``
  descends for exact XOR-closest answers, and one small slotted entry per peer;
- loaded from the store at start (``load``): a restarted node answers at once;
- written through in batches (``flush``, every ``FLUSH_INTERVAL`` in ``run``): the
  changes since the last flush, one transaction, never a write per ``add``.

There are no buckets and no seniority: every server found fits. A peer leaves after
``max_failures`` consecutive failed contacts (``mark_failed``), never in a sweep.
Times written to the store are the wall clock's (epoch seconds); the ``now`` given by
callers is only what ``last_useful`` reports back. Not thread-safe; one event loop.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import time
from collections.abc import Callable
from hashlib import sha256

import anyio
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.addrs import addr_kinds, pack_addrs, unpack_addrs
from ..data.dialects import upsert
from ..data.failures import unavailable
from ..data.models import NetworkPeerRow
from ..errors import StoreError
from ..kadkey import Key
from ..peerid import PeerId, PeerIdError
from ..types import PeerInfo
from .xorsearch import closest_keys

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # consecutive failed contacts before a peer leaves
FLUSH_INTERVAL = 10.0  # seconds between write-throughs
FLUSH_BATCH = 2000  # rows per statement of a flush
LOAD_PAGE = 10_000  # rows per query of a load


class _Entry:
    """One peer, compact: its id and packed addresses as bytes (a PeerInfo is built when
    asked for), about half the memory of holding PeerInfo, PeerId and address tuples."""

    __slots__ = ("pid", "addrs", "key", "last_useful", "failures", "contacted_at", "crawled_at", "first_seen_at")

    def __init__(self, pid: bytes, addrs: bytes, key: int, first_seen_at: int):
        self.pid = pid
        self.addrs = addrs
        self.key = key
        self.last_useful: float | None = None
        self.failures = 0
        self.contacted_at: int | None = None
        self.crawled_at: int | None = None
        self.first_seen_at = first_seen_at

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(PeerId(self.pid), unpack_addrs(self.addrs))


class FullTable:
    """``routingtable.api.NetworkTable``: the whole network, exact XOR order, in SQL."""

    def __init__(
        self,
        local_key: Key,
        engine: AsyncEngine | None = None,
        *,
        max_failures: int = MAX_FAILURES,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._local_key = local_key
        self._engine = engine
        self.max_failures = max_failures
        self._wall = wall_clock
        self._entries: dict[bytes, _Entry] = {}  # by binary peer id
        self._sorted_keys: list[int] = []  # every entry's key, ascending
        self._sorted_entries: list[_Entry] = []  # the entries in the same order (no key -> entry dict)
        self._dirty: set[bytes] = set()  # entries to upsert at the next flush
        self._removed: set[bytes] = set()  # rows to delete at the next flush
        self._identified: dict[bytes, tuple[str, str]] = {}  # agent, protocols to write
        self.written = 0

    # -- routingtable.api.RoutingTable -------------------------------------------

    @property
    def local_key(self) -> Key:
        return self._local_key

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, PeerId) and peer_id.to_bytes() in self._entries

    def get(self, peer_id: PeerId) -> PeerInfo | None:
        entry = self._entries.get(peer_id.to_bytes())
        return entry.info if entry else None

    def peers(self) -> list[PeerInfo]:
        return [e.info for e in self._entries.values()]

    def local_closest_peers(self, key: Key, n: int) -> list[PeerInfo]:
        if n <= 0:
            return []
        keys, entries = self._sorted_keys, self._sorted_entries
        return [entries[bisect.bisect_left(keys, k)].info for k in closest_keys(keys, key.value, n)]

    def add(self, peer: PeerInfo, now: float, *, seen_from: bytes | None = None) -> bool:
        # ``seen_from`` is not used: the full table holds every server the crawl found
        # and applies no IP-diversity limit (a known gap: issue 15's note).
        pid = peer.peer_id.to_bytes()
        entry = self._entries.get(pid)
        if entry is None:
            key = int.from_bytes(sha256(pid).digest(), "big")
            if key == self._local_key.value:
                return False
            entry = _Entry(pid, pack_addrs(peer.addrs), key, int(self._wall()))
            entry.last_useful = now
            self._insert(entry)
            self._removed.discard(pid)
        elif peer.addrs:
            entry.addrs = pack_addrs(peer.addrs)
        self._dirty.add(pid)
        return True

    def remove(self, peer_id: PeerId) -> bool:
        pid = peer_id.to_bytes()
        entry = self._entries.pop(pid, None)
        if entry is None:
            return False
        at = bisect.bisect_left(self._sorted_keys, entry.key)
        del self._sorted_keys[at]
        del self._sorted_entries[at]
        self._dirty.discard(pid)
        self._identified.pop(pid, None)
        self._removed.add(pid)
        return True

    def mark_useful(self, peer_id: PeerId, now: float) -> None:
        entry = self._entries.get(peer_id.to_bytes())
        if entry is not None:
            entry.last_useful = now
            entry.failures = 0
            entry.contacted_at = int(self._wall())
            self._dirty.add(entry.pid)

    def mark_failed(self, peer_id: PeerId) -> None:
        """One more consecutive failure; the peer leaves at ``max_failures``."""
        entry = self._entries.get(peer_id.to_bytes())
        if entry is None:
            return
        entry.failures += 1
        if entry.failures >= self.max_failures:
            self.remove(peer_id)
        else:
            self._dirty.add(entry.pid)

    def last_useful(self, peer_id: PeerId) -> float | None:
        entry = self._entries.get(peer_id.to_bytes())
        return entry.last_useful if entry else None

    # -- routingtable.api.NetworkTable -------------------------------------------

    def failures(self, peer_id: PeerId) -> int:
        entry = self._entries.get(peer_id.to_bytes())
        return entry.failures if entry else 0

    def crawl_queue(self, crawled_before: float, limit: int) -> list[PeerInfo]:
        """Up to ``limit`` peers not crawled since ``crawled_before``: failing ones first,
        then never crawled, then the oldest crawled."""
        due = (e for e in self._entries.values() if e.crawled_at is None or e.crawled_at < crawled_before)
        chosen = heapq.nsmallest(limit, due, key=lambda e: (-e.failures, -1 if e.crawled_at is None else e.crawled_at))
        return [e.info for e in chosen]

    def next_crawl_due(self) -> float:
        """When the least recently crawled peer was crawled (-inf: one never was)."""
        return min((-math.inf if e.crawled_at is None else e.crawled_at for e in self._entries.values()), default=math.inf)

    def mark_crawled(self, peer_id: PeerId) -> None:
        entry = self._entries.get(peer_id.to_bytes())
        if entry is not None:
            entry.crawled_at = int(self._wall())
            self._dirty.add(entry.pid)

    def crawled_since(self, since: float) -> int:
        return sum(1 for e in self._entries.values() if e.crawled_at is not None and e.crawled_at >= since)

    def note_identify(self, peer_id: PeerId, agent: str, protocols: tuple[str, ...]) -> None:
        pid = peer_id.to_bytes()
        if pid in self._entries:
            self._identified[pid] = (agent, "\n".join(protocols))

    # -- the store ---------------------------------------------------------------

    async def load(self, page: int = LOAD_PAGE) -> int:
        """Read every row of ``network_peers`` into the index, ``page`` rows at a time in
        peer-id order (a driver may buffer a whole result: the peak stays one page); rows
        that no longer parse are skipped. Returns how many peers the table then holds."""
        assert self._engine is not None
        columns = (
            NetworkPeerRow.peer_id, NetworkPeerRow.addrs, NetworkPeerRow.failures, NetworkPeerRow.crawled_at,
            NetworkPeerRow.last_contact_at, NetworkPeerRow.first_seen_at,
        )
        after: bytes | None = b""
        with unavailable("routing table"):
            async with self._engine.connect() as conn:
                while after is not None:  # each page starts past the last: ends after the last row
                    query = select(*columns).where(NetworkPeerRow.peer_id > after).order_by(NetworkPeerRow.peer_id).limit(page)
                    rows = (await conn.execute(query)).all()
                    for peer_id, addrs, failures, crawled_at, contacted_at, first_seen in rows:
                        self._load_row(bytes(peer_id), bytes(addrs), failures, crawled_at, contacted_at, first_seen)
                    after = bytes(rows[-1][0]) if len(rows) == page else None
        self._sorted_entries = sorted(self._entries.values(), key=lambda e: e.key)
        self._sorted_keys = [e.key for e in self._sorted_entries]
        return len(self._entries)

    async def flush(self) -> int:
        """Write the changes since the last flush in one transaction; returns rows touched.
        On a store failure the changes stay queued for the next flush."""
        if self._engine is None or not (self._dirty or self._removed or self._identified):
            return 0
        dirty, removed, identified = self._dirty, self._removed, self._identified
        self._dirty, self._removed, self._identified = set(), set(), {}
        now = int(self._wall())
        upserts = [p for p in sorted(dirty) if p in self._entries]  # rows built a batch at a time
        named = [{"pid": p, "agent": a, "protocols": pr} for p, (a, pr) in identified.items() if p in self._entries]
        gone = sorted(removed)
        statement = upsert(self._engine, NetworkPeerRow, ["peer_id"], [
            "addrs", "addr_kinds", "last_seen_at", "last_contact_at", "failures", "crawled_at",
        ])
        try:
            with unavailable("routing table"):
                async with self._engine.begin() as conn:
                    for i in range(0, len(upserts), FLUSH_BATCH):
                        # (an entry removed while this flush ran is deleted by the next one)
                        batch = [self._row(e, now) for p in upserts[i : i + FLUSH_BATCH] if (e := self._entries.get(p))]
                        if batch:
                            await conn.execute(statement, batch)
                    for i in range(0, len(gone), FLUSH_BATCH):
                        await conn.execute(delete(NetworkPeerRow).where(NetworkPeerRow.peer_id.in_(gone[i : i + FLUSH_BATCH])))
                    if named:
                        await conn.execute(_SET_IDENTIFY, named)
        except StoreError:
            self._dirty |= dirty
            self._removed |= removed - self._entries.keys()
            self._identified = {**identified, **self._identified}
            raise
        touched = len(upserts) + len(gone) + len(named)
        self.written += touched
        return touched

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        """Flush every ``interval`` seconds until cancelled; a last flush on the way out."""
        try:
            while True:
                await anyio.sleep(interval)
                try:
                    await self.flush()
                except StoreError as exc:
                    log.warning("routing table not written: %s", exc)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                try:
                    await self.flush()
                except StoreError as exc:
                    log.warning("routing table not written at exit: %s", exc)

    # -- internals ---------------------------------------------------------------

    def _load_row(
        self, pid: bytes, addrs: bytes, failures: int, crawled_at: int | None, contacted_at: int | None, first_seen: int
    ) -> None:
        try:
            PeerId.from_bytes(pid)  # checked once here; entries then hold the bytes
        except (PeerIdError, ValueError):
            return
        key = int.from_bytes(sha256(pid).digest(), "big")
        if pid in self._entries or key == self._local_key.value:
            return
        entry = _Entry(pid, addrs, key, first_seen)
        entry.failures, entry.crawled_at, entry.contacted_at = failures, crawled_at, contacted_at
        self._entries[pid] = entry

    def _insert(self, entry: _Entry) -> None:
        self._entries[entry.pid] = entry
        at = bisect.bisect_left(self._sorted_keys, entry.key)
        self._sorted_keys.insert(at, entry.key)
        self._sorted_entries.insert(at, entry)

    @staticmethod
    def _row(entry: _Entry, now: int) -> dict[str, object]:
        return {
            "peer_id": entry.pid,
            "peer_id_text": PeerId(entry.pid).to_base58(),
            "kad_key": entry.key.to_bytes(32, "big"),
            "addrs": entry.addrs,
            "addr_kinds": addr_kinds(unpack_addrs(entry.addrs)),
            "agent": "",
            "protocols": "",
            "first_seen_at": entry.first_seen_at,
            "last_seen_at": now,
            "last_contact_at": entry.contacted_at,
            "failures": entry.failures,
            "crawled_at": entry.crawled_at,
        }


_SET_IDENTIFY = (
    update(NetworkPeerRow)
    .where(NetworkPeerRow.peer_id == bindparam("pid"))
    .values(agent=bindparam("agent"), protocols=bindparam("protocols"))
)
