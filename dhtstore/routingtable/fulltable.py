"""The full routing table: every DHT server of the network, kept in SQL (``network_peers``).

go-libp2p-kad-dht's ``fullrt`` holds the crawled network in memory only and replaces it
wholesale after each crawl, so a restart starts from the bootstrap peers. Here the
store is the table's truth and a compact index lives in memory:

- a sorted list of the peers' Kademlia keys (ints), which ``xorsearch.closest_keys``
  descends for exact XOR-closest answers, and one small slotted entry per peer;
- loaded from the store at start (``load``): a restarted node answers at once;
- written through in batches (``flush``, every ``FLUSH_INTERVAL`` in ``run``): the
  changes since the last flush, one transaction, never a write per ``add``;
- the crawl order without a scan: the entries dict is kept in ``crawled_at`` order (a
  visit moves its peer to the end), and the few peers outside that order (failing, never
  crawled since the load, reset by an answer, crawled while the clock went back) are held apart, so
  ``crawl_queue`` costs the batch and those few, not the whole table per batch (a scan
  per batch made an hourly crawl of N peers cost N^2 / batch).

There are no buckets and no seniority: every server found fits, except past the IP
diversity limits (``ip_diversity``): at most ``MAX_PEERS_PER_IP`` peers at one IP address
and ``MAX_PEERS_PER_SUBNET`` in one IPv4 /24 or IPv6 /48, over the whole table, counted at
the address the peer was seen at (``seen_from``) when there is one. The k-bucket table's
3 per /16 would throw away most of a hosting provider's servers from a table of the whole
network; these limits stop one machine or one rented subnet filling it with
generated peer ids (go's ``fullrt`` has none). A peer leaves after
``max_failures`` consecutive failed contacts (``mark_failed``), never in a sweep.
Times written to the store are the wall clock's (epoch seconds); the ``now`` given by
callers is only what ``last_useful`` reports back. Not thread-safe; one event loop.

Shared store (``shared``: several heads of one PostgreSQL store each crawl a shard of
the keyspace, ``rtrefresh.crawlshards``): the store's rows are the truth and every
table follows them. ``read_in`` (after each flush in ``run``) adopts the rows the
others wrote since the last look (``last_seen_at``, set at every write) when they were
crawled later than what this table holds, and now and then drops the entries whose
row another head deleted. A flush never overwrites a row crawled later than the
table's entry (the upsert is conditional on ``crawled_at``), nor deletes one crawled
after the entry it removed: the newer crawl wins, whoever flushes last.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import logging
import math
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from hashlib import sha256
from typing import Any

import anyio
from sqlalchemy import BigInteger, and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.addrs import addr_kinds, pack_addrs, unpack_addrs
from ..data.dialects import dialect_insert
from ..data.failures import unavailable
from ..data.fastread import Reader
from ..data.models import NetworkPeerRow
from ..errors import StoreError
from ..kadkey import Key
from ..peerid import PeerId, PeerIdError
from ..types import PeerInfo
from .api import KeyShards
from .ipgroups import address_groups, subnet_groups
from .xorsearch import closest_keys

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # consecutive failed contacts before a peer leaves
FLUSH_INTERVAL = 10.0  # seconds between write-throughs
FLUSH_BATCH = 2000  # rows per statement of a flush
LOAD_PAGE = 10_000  # rows per query of a load
MAX_PEERS_PER_IP = 3  # peers of the table at one IP address (one machine)
MAX_PEERS_PER_SUBNET = 16  # peers of the table in one IPv4 /24 or IPv6 /48
READ_OVERLAP = 120  # seconds a read-in looks back past the last one: clock skew, slow flushes
RECONCILE_EVERY = 30  # read-ins between looks for rows other heads deleted
_NO_GROUPS: tuple[bytes, ...] = ()


class _Entry:
    """One peer, compact: its id and packed addresses as bytes (a PeerInfo is built when
    asked for), about half the memory of holding PeerInfo, PeerId and address tuples."""

    __slots__ = ("pid", "addrs", "key", "last_useful", "failures", "contacted_at", "crawled_at", "first_seen_at", "groups")

    def __init__(self, pid: bytes, addrs: bytes, key: int, first_seen_at: int):
        self.groups = _NO_GROUPS  # the IP and subnet groups counted for it (diversity on)
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
        ip_diversity: bool = False,
        max_per_ip: int = MAX_PEERS_PER_IP,
        max_per_subnet: int = MAX_PEERS_PER_SUBNET,
        shared: bool = False,
    ):
        self._local_key = local_key
        self._ip_diversity = ip_diversity
        self._group_limits = {b"a": max_per_ip, b"s": max_per_subnet}  # by a group's first byte
        self._group_count: Counter[bytes] = Counter()
        self.refused_by_ip = 0  # peers not admitted (or loaded) past a diversity limit
        self._engine = engine
        self.max_failures = max_failures
        self._wall = wall_clock
        self._entries: dict[bytes, _Entry] = {}  # by binary peer id; those not in _unordered by crawled_at
        self._unordered: dict[bytes, _Entry] = {}  # failing, added since the load, or out of crawled_at order
        self._ordered_until = -1  # the latest crawled_at placed in order: the next one placed is not older
        self._sorted_keys: list[int] = []  # every entry's key, ascending
        self._sorted_entries: list[_Entry] = []  # the entries in the same order (no key -> entry dict)
        self._dirty: set[bytes] = set()  # entries to upsert at the next flush
        self._removed: dict[bytes, int | None] = {}  # rows to delete at the next flush: their crawled_at
        self.shared = shared  # other heads write the store too: read their rows in (``run``)
        self._read_since = 0  # wall-clock time of the last read-in (or load)
        self._read_ins = 0
        self.adopted = 0  # rows of other heads read in (new peers or later crawls)
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
        pid = peer.peer_id.to_bytes()
        entry = self._entries.get(pid)
        if entry is None:
            key = int.from_bytes(sha256(pid).digest(), "big")
            if key == self._local_key.value:
                return False
            groups = self._groups_of((seen_from,) if seen_from is not None else peer.addrs)
            if groups is None:
                return False
            entry = _Entry(pid, pack_addrs(peer.addrs), key, int(self._wall()))
            entry.last_useful = now
            self._count(entry, groups)
            self._insert(entry)
            self._removed.pop(pid, None)
        elif peer.addrs:
            entry.addrs = pack_addrs(peer.addrs)
        self._dirty.add(pid)
        return True

    def remove(self, peer_id: PeerId) -> bool:
        pid = peer_id.to_bytes()
        entry = self._drop(pid)
        if entry is None:
            return False
        self._removed[pid] = entry.crawled_at
        return True

    def _drop(self, pid: bytes) -> _Entry | None:
        """Out of the index (``remove`` also deletes its row at the next flush)."""
        entry = self._entries.pop(pid, None)
        if entry is None:
            return None
        self._unordered.pop(pid, None)
        at = bisect.bisect_left(self._sorted_keys, entry.key)
        del self._sorted_keys[at]
        del self._sorted_entries[at]
        for group in entry.groups:
            self._group_count[group] -= 1
            if not self._group_count[group]:
                del self._group_count[group]
        self._dirty.discard(pid)
        self._identified.pop(pid, None)
        return entry

    def mark_useful(self, peer_id: PeerId, now: float) -> None:
        entry = self._entries.get(peer_id.to_bytes())
        if entry is not None:
            entry.last_useful = now
            entry.failures = 0  # (if it was failing it stays apart: its place is its old crawl)
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
            self._unordered[entry.pid] = entry  # failing ones come first
            self._dirty.add(entry.pid)

    def last_useful(self, peer_id: PeerId) -> float | None:
        entry = self._entries.get(peer_id.to_bytes())
        return entry.last_useful if entry else None

    # -- routingtable.api.NetworkTable -------------------------------------------

    def failures(self, peer_id: PeerId) -> int:
        entry = self._entries.get(peer_id.to_bytes())
        return entry.failures if entry else 0

    def crawl_queue(self, crawled_before: float, limit: int, within: KeyShards | None = None) -> list[PeerInfo]:
        """Up to ``limit`` peers (of the shards ``within``) not crawled since
        ``crawled_before``: failing ones first, then never crawled, then the oldest crawled."""
        if within is not None:  # a slice of the sorted index per shard
            due = (e for e in self._within(within) if e.crawled_at is None or e.crawled_at < crawled_before)
            return [e.info for e in heapq.nsmallest(limit, due, key=_crawl_rank)]
        unordered = self._unordered
        candidates = [e for e in unordered.values() if e.crawled_at is None or e.crawled_at < crawled_before]
        taken = 0
        for pid, entry in self._entries.items():  # crawled_at order: the due ones lead
            if taken >= limit:
                break
            if pid in unordered:
                continue
            if entry.crawled_at is not None and entry.crawled_at >= crawled_before:
                break
            candidates.append(entry)
            taken += 1
        chosen = heapq.nsmallest(limit, candidates, key=_crawl_rank)
        return [e.info for e in chosen]

    def next_crawl_due(self, within: KeyShards | None = None) -> float:
        """When the least recently crawled peer (of the shards ``within``) was crawled
        (-inf: one never was)."""
        if within is not None:
            return min((-math.inf if e.crawled_at is None else e.crawled_at for e in self._within(within)), default=math.inf)
        first = next((e for pid, e in self._entries.items() if pid not in self._unordered), None)
        first_due = math.inf if first is None else -math.inf if first.crawled_at is None else first.crawled_at
        return min((-math.inf if e.crawled_at is None else e.crawled_at for e in self._unordered.values()), default=first_due)

    def _within(self, shards: KeyShards) -> Iterator[_Entry]:
        keys = self._sorted_keys
        for first, last in shards.ranges():
            yield from self._sorted_entries[bisect.bisect_left(keys, first) : bisect.bisect_right(keys, last)]

    def mark_crawled(self, peer_id: PeerId) -> None:
        entry = self._entries.get(peer_id.to_bytes())
        if entry is not None:
            entry.crawled_at = int(self._wall())
            self._dirty.add(entry.pid)
            self._place(entry)

    def crawled_since(self, since: float) -> int:
        return sum(1 for e in self._entries.values() if e.crawled_at is not None and e.crawled_at >= since)

    def count_under_prefix(self, bits: int, length: int) -> int:
        if not 0 <= length <= 256 or not 0 <= bits < (1 << length):
            raise ValueError(f"invalid prefix {bits:#x}/{length}")
        first = bits << (256 - length)
        last = first | ((1 << (256 - length)) - 1)
        keys = self._sorted_keys
        return bisect.bisect_right(keys, last) - bisect.bisect_left(keys, first)

    def note_identify(self, peer_id: PeerId, agent: str, protocols: tuple[str, ...]) -> None:
        pid = peer_id.to_bytes()
        if pid in self._entries:
            self._identified[pid] = (agent, "\n".join(protocols))

    # -- the store ---------------------------------------------------------------

    async def load(self, page: int = LOAD_PAGE, reader: Reader | None = None) -> int:
        """Read every row of ``network_peers`` into the index, ``page`` rows at a time in
        peer-id order (a driver may buffer a whole result: the peak stays one page); rows
        that no longer parse are skipped. ``reader``: the store's fast-read path (the
        driver without SQLAlchemy's asyncio layer and result rows, 2-3x faster at 100k
        rows: the time to the first answer after a restart). Returns how many peers the
        table then holds."""
        assert self._engine is not None
        self._read_since = int(self._wall())
        after = b""
        query = _LOAD_PAGE_QUERY.limit(page)
        loaded: list[_Entry] = []
        with unavailable("routing table"), _no_cyclic_gc():
            if reader is not None:
                while True:  # each page starts past the last: ends after the last row
                    fast = await reader.fetch(query, after=after)
                    self._load_rows(fast, loaded)
                    if len(fast) < page:
                        break
                    after = bytes(fast[-1][0])
            else:
                async with self._engine.connect() as conn:
                    while True:
                        rows = (await conn.execute(query, {"after": after})).all()
                        self._load_rows(rows, loaded)
                        if len(rows) < page:
                            break
                        after = bytes(rows[-1][0])
        # The crawl order: peers the table held before the load (none, as the node loads)
        # stay apart, the loaded ones follow, never crawled first, then by crawled_at (the
        # sort key is the entry's own int: no key object per row left in the heap).
        self._unordered.update(self._entries)
        never = [e for e in loaded if e.crawled_at is None]
        crawled = [e for e in loaded if e.crawled_at is not None]
        crawled.sort(key=_CRAWLED_AT)
        loaded = never + crawled
        del never, crawled
        self._entries.update((e.pid, e) for e in loaded)
        self._unordered.update((e.pid, e) for e in loaded if e.failures)
        self._ordered_until = max((e.crawled_at for e in loaded if not e.failures and e.crawled_at is not None), default=-1)
        del loaded
        self._sorted_entries = sorted(self._entries.values(), key=lambda e: e.key)
        self._sorted_keys = [e.key for e in self._sorted_entries]
        return len(self._entries)

    async def flush(self) -> int:
        """Write the changes since the last flush in one transaction; returns rows touched.
        On a store failure the changes stay queued for the next flush."""
        if self._engine is None or not (self._dirty or self._removed or self._identified):
            return 0
        dirty, removed, identified = self._dirty, self._removed, self._identified
        self._dirty, self._removed, self._identified = set(), {}, {}
        now = int(self._wall())
        upserts = [p for p in sorted(dirty) if p in self._entries]  # rows built a batch at a time
        named = [{"pid": p, "agent": a, "protocols": pr} for p, (a, pr) in identified.items() if p in self._entries]
        gone = [{"pid": p, "crawled": removed[p]} for p in sorted(removed)]
        statement = _upsert_unless_crawled_later(self._engine)
        try:
            with unavailable("routing table"):
                async with self._engine.begin() as conn:
                    for i in range(0, len(upserts), FLUSH_BATCH):
                        # (an entry removed while this flush ran is deleted by the next one)
                        batch = [self._row(e, now) for p in upserts[i : i + FLUSH_BATCH] if (e := self._entries.get(p))]
                        if batch:
                            await conn.execute(statement, batch)
                    for i in range(0, len(gone), FLUSH_BATCH):
                        await conn.execute(_DELETE_UNLESS_CRAWLED_LATER, gone[i : i + FLUSH_BATCH])
                    if named:
                        await conn.execute(_SET_IDENTIFY, named)
        except StoreError:
            self._dirty |= dirty
            self._removed = {p: c for p, c in removed.items() if p not in self._entries} | self._removed
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
                    if self.shared:
                        await self.read_in()
                except StoreError as exc:
                    log.warning("routing table not written or read in: %s", exc)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                try:
                    await self.flush()
                except StoreError as exc:
                    log.warning("routing table not written at exit: %s", exc)

    async def read_in(self) -> int:
        """Adopt what the other heads of a shared store wrote since the last read-in:
        rows of peers this table lacks, and rows crawled later than its entry (or as
        late, when the entry has no change of its own to write). Every
        ``RECONCILE_EVERY`` calls, also drop the entries whose row is gone (another
        head removed the peer). Returns how many rows were adopted."""
        assert self._engine is not None
        started = int(self._wall())
        query = _READ_IN_QUERY.where(NetworkPeerRow.last_seen_at >= self._read_since - READ_OVERLAP)
        self._read_ins += 1
        reconcile = self._read_ins % RECONCILE_EVERY == 0
        with unavailable("routing table"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
                stored = set((await conn.execute(select(NetworkPeerRow.peer_id))).scalars()) if reconcile else None
        self._read_since = started
        adopted = self._adopt_rows(rows)
        if stored is not None:
            for pid in [p for p in self._entries if p not in stored and p not in self._dirty]:
                self._drop(pid)
        self.adopted += adopted
        return adopted

    # -- internals ---------------------------------------------------------------

    def _adopt_rows(self, rows: Sequence[Sequence[Any]]) -> int:
        known = len(self._entries)
        newcomers: list[_Entry] = []
        adopted = 0
        for peer_id, addrs, failures, crawled_at, contacted_at, first_seen in rows:
            pid = bytes(peer_id)
            if pid in self._removed:  # our delete is on its way (and wins if the row is not newer)
                continue
            entry = self._entries.get(pid)
            if entry is None:
                loaded: list[_Entry] = []
                self._load_rows([(pid, addrs, failures, crawled_at, contacted_at, first_seen)], loaded)
                for new in loaded:  # out of the crawl order: held apart
                    self._entries[pid] = self._unordered[pid] = new
                    newcomers.append(new)
                    adopted += 1
                continue
            later = crawled_at is not None and (entry.crawled_at is None or crawled_at > entry.crawled_at)
            if later or (crawled_at == entry.crawled_at and pid not in self._dirty):
                entry.addrs, entry.failures, entry.crawled_at, entry.contacted_at = bytes(addrs), failures, crawled_at, contacted_at
                self._unordered[pid] = entry  # its crawl time moved: out of the crawl order
                adopted += later
        if len(newcomers) > known // 8:  # many: one sort beats many inserts into the index
            self._sorted_entries = sorted(self._entries.values(), key=lambda e: e.key)
            self._sorted_keys = [e.key for e in self._sorted_entries]
        else:
            for entry in newcomers:
                at = bisect.bisect_left(self._sorted_keys, entry.key)
                self._sorted_keys.insert(at, entry.key)
                self._sorted_entries.insert(at, entry)
        return adopted

    def _load_rows(self, rows: Sequence[Sequence[Any]], loaded: list[_Entry]) -> None:
        """Parse a page of rows, appending the new entries to ``loaded``."""
        entries, local, diversity = self._entries, self._local_key.value, self._ip_diversity
        for peer_id, addrs, failures, crawled_at, contacted_at, first_seen in rows:
            pid = bytes(peer_id)
            if not _plausible_peer_id(pid):
                try:
                    PeerId.from_bytes(pid)
                except (PeerIdError, ValueError):
                    continue
            key = int.from_bytes(sha256(pid).digest(), "big")
            if pid in entries or key == local:
                continue
            entry = _Entry(pid, bytes(addrs), key, first_seen)
            if diversity:  # rows admitted under other limits (or none) meet today's
                groups = self._groups_of(unpack_addrs(entry.addrs))
                if groups is None:
                    continue
                self._count(entry, groups)
            entry.failures, entry.crawled_at, entry.contacted_at = failures, crawled_at, contacted_at
            loaded.append(entry)

    def _groups_of(self, addrs: tuple[bytes, ...]) -> tuple[bytes, ...] | None:
        """The IP groups a newcomer at ``addrs`` would count in; None when one is full."""
        if not self._ip_diversity:
            return _NO_GROUPS
        groups = [b"a" + g for g in address_groups(addrs)] + [b"s" + g for g in subnet_groups(addrs)]
        if any(self._group_count[g] >= self._group_limits[g[:1]] for g in groups):
            self.refused_by_ip += 1
            return None
        return tuple(groups)

    def _count(self, entry: _Entry, groups: tuple[bytes, ...]) -> None:
        entry.groups = groups
        for group in groups:
            self._group_count[group] += 1

    def _insert(self, entry: _Entry) -> None:
        self._entries[entry.pid] = entry
        self._unordered[entry.pid] = entry  # never crawled, behind ones that were
        at = bisect.bisect_left(self._sorted_keys, entry.key)
        self._sorted_keys.insert(at, entry.key)
        self._sorted_entries.insert(at, entry)

    def _place(self, entry: _Entry) -> None:
        """A visited peer goes to the end of the crawl order (a failing one stays apart:
        failures come first), unless the clock went back past the last one's visit."""
        pid, entries, unordered, at = entry.pid, self._entries, self._unordered, entry.crawled_at
        assert at is not None
        del entries[pid]
        entries[pid] = entry
        if entry.failures or at < self._ordered_until:
            unordered[pid] = entry
        else:
            unordered.pop(pid, None)
            self._ordered_until = at

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


_CRAWLED_AT = operator.attrgetter("crawled_at")


def _crawl_rank(entry: _Entry) -> tuple[int, int]:
    """``crawl_queue``'s order: most failures first, then never crawled, then oldest crawl."""
    return (-entry.failures, -1 if entry.crawled_at is None else entry.crawled_at)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic collector paused: 100k long-lived entries (and their rows) allocated in
    one go set off many collections, each traversing everything loaded so far, none
    finding garbage: about 45 % of a load's CPU (reference counting still frees)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _plausible_peer_id(pid: bytes) -> bool:
    """The two shapes of a valid peer id, checked without parsing (a load checks 100k):
    sha2-256 (0x12 0x20 + 32 bytes) or identity (0x00, a one-byte length <= 42, the key).
    Anything else goes through ``PeerId.from_bytes``, which refuses what is not valid."""
    if len(pid) == 34:
        return pid[0] == 0x12 and pid[1] == 0x20
    return len(pid) > 2 and pid[0] == 0 and 0 < pid[1] <= 42 and len(pid) == pid[1] + 2


_LOAD_PAGE_QUERY = (
    select(
        NetworkPeerRow.peer_id, NetworkPeerRow.addrs, NetworkPeerRow.failures, NetworkPeerRow.crawled_at,
        NetworkPeerRow.last_contact_at, NetworkPeerRow.first_seen_at,
    )
    .where(NetworkPeerRow.peer_id > bindparam("after"))
    .order_by(NetworkPeerRow.peer_id)
)

_READ_IN_QUERY = select(
    NetworkPeerRow.peer_id, NetworkPeerRow.addrs, NetworkPeerRow.failures, NetworkPeerRow.crawled_at,
    NetworkPeerRow.last_contact_at, NetworkPeerRow.first_seen_at,
)

_DELETE_UNLESS_CRAWLED_LATER = delete(NetworkPeerRow).where(
    NetworkPeerRow.peer_id == bindparam("pid"),
    or_(NetworkPeerRow.crawled_at.is_(None), NetworkPeerRow.crawled_at <= bindparam("crawled", type_=BigInteger)),
)


def _upsert_unless_crawled_later(engine: AsyncEngine) -> Any:
    """Insert, or update the row unless it was crawled later than the entry written (by
    another head of a shared store): then the row stays and ``read_in`` adopts it."""
    stmt = dialect_insert(engine)(NetworkPeerRow)
    new, row = stmt.excluded, NetworkPeerRow.__table__.c
    columns = ("addrs", "addr_kinds", "last_seen_at", "last_contact_at", "failures", "crawled_at")
    return stmt.on_conflict_do_update(
        index_elements=["peer_id"],
        set_={c: new[c] for c in columns},
        where=or_(row.crawled_at.is_(None), and_(new.crawled_at.is_not(None), new.crawled_at >= row.crawled_at)),
    )


_SET_IDENTIFY = (
    update(NetworkPeerRow)
    .where(NetworkPeerRow.peer_id == bindparam("pid"))
    .values(agent=bindparam("agent"), protocols=bindparam("protocols"))
)
