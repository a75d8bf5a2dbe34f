"""The incremental crawler that keeps a full routing table (``routingtable.api.NetworkTable``).

go-libp2p-kad-dht's ``crawler`` visits every server once an hour (FIND_NODE for a
random key at each common-prefix length 0-15 of the visited peer, parallelism 200) and
``fullrt`` then replaces its table with the result. This crawler never replaces the
table and never starts from nothing:

- it starts from the table it has (loaded from the store), and visits, in order, the
  peers the crawl discovered but the table does not hold yet, then the table's peers
  due again: failing ones first (retried after ``retry_after``), then never crawled,
  then the longest ago; a peer is due ``interval`` after its last visit, so every
  region is covered within ``interval`` (default 1 h) and the load is spread over it;
- a visit asks the peer FIND_NODE for one random key at each CPL 0-15 of *its* key
  (the keys come from a precomputed 16-bit prefix map, as go-libp2p-kbucket's
  ``GenRandPeerID``: no hashing per request); the closer peers it names are discovered;
- a discovered peer enters the table only once its own visit answered (only servers
  that answer are routed to; one that did not is not asked again for ``retry_after``,
  then twice that after each further silence, up to ``interval``: a silent server costs
  a visit slot for the whole timeout, and at 10k servers with 30 % silent, retrying
  each every 10 min took two thirds of the crawler's visits);
  a table peer whose visit fails counts a failure and
  leaves the table at its ``max_failures``;
- at most ``parallelism`` visits run at once, and at most ``rate`` start per second.

Shared store (``shards`` set: ``rtrefresh.crawlshards``): the crawler visits only the
peers in its head's shards; the other heads crawl the rest and the table reads their
rows in. A peer discovered outside the shards is dropped (its shard's head finds it
by crawling there), except as a seed: when the table holds no peer at all in that
shard (a fresh store), one such peer at a time is visited, so the shard's head has
something to start from once it reads the row in. Likewise, while one of our own
shards holds no peer and nothing else is due, a table peer outside them is visited
(one at a time, each once, a few per shard we hold: a shard may be empty in a small
network): its answers lead into our shards.

``status()`` gives the progress (also in the ``v_network_coverage`` view of the store).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from .. import amino
from ..errors import NetworkError
from ..kadkey import Key
from ..multihash import SHA2_256_HEADER
from ..network.api import KadMessenger
from ..peerid import PeerId
from ..routingtable.api import KeyShards, NetworkTable
from ..types import Message, MessageType, PeerInfo

log = logging.getLogger(__name__)

CRAWL_INTERVAL = 3600.0  # every peer is visited again within this
CPLS = 16  # a random key at each CPL 0..15 of the visited peer (go's crawler and fullrt)
PREFIX_BITS = 16
DEFAULT_PARALLELISM = 32
DEFAULT_RATE = 20.0  # visits started per second at most (x16 requests)
VISIT_TIMEOUT = 5.0  # per request, as fullrt's crawler
MAX_DISCOVERED = 20_000  # peers named but not yet visited; the oldest are forgotten past it
IDLE_CHECK = 30.0  # seconds between looks at the queue when nothing is due

AddrFilter = Callable[[Sequence[bytes]], tuple[bytes, ...]]


def prefix_preimages(rng: Callable[[int], bytes] = os.urandom) -> list[bytes]:
    """For each 16-bit prefix p, a sha2-256 multihash whose Kademlia key starts with p
    (about 800k hashes, once: run it in a worker thread)."""
    found: list[bytes | None] = [None] * (1 << PREFIX_BITS)
    missing = len(found)
    for _ in range(64 << PREFIX_BITS):  # a bound this loop misses with probability ~e^-50
        candidate = SHA2_256_HEADER + rng(32)
        slot = int.from_bytes(hashlib.sha256(candidate).digest()[:2], "big")  # the key's first 16 bits
        if found[slot] is None:
            found[slot] = candidate
            missing -= 1
            if not missing:
                return [p for p in found if p is not None]
    raise RuntimeError("prefix map incomplete")  # pragma: no cover


class Crawler:
    def __init__(
        self,
        table: NetworkTable,
        messenger: KadMessenger,
        *,
        interval: float = CRAWL_INTERVAL,
        retry_after: float | None = None,
        parallelism: int = DEFAULT_PARALLELISM,
        rate: float = DEFAULT_RATE,
        timeout: float = VISIT_TIMEOUT,
        usable_addrs: AddrFilter = tuple,
        remote_addr: Callable[[PeerId], bytes | None] = lambda _peer: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[int], int] = secrets.randbits,
        preimages: list[bytes] | None = None,
    ):
        self.table = table
        self._messenger = messenger
        self.interval = interval
        self.retry_after = interval / 6 if retry_after is None else retry_after
        self.parallelism = parallelism
        self.rate = rate
        self.timeout = timeout
        self._usable = usable_addrs
        self._remote_addr = remote_addr  # the address a visited peer answered from (IP diversity)
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng
        self._preimages = preimages
        self._discovered: OrderedDict[PeerId, PeerInfo] = OrderedDict()
        self._in_flight: set[PeerId] = set()
        self._retry_at: dict[PeerId, float] = {}  # a failed table peer's next visit (wall clock)
        # discovered peers that did not answer: ignored until then (wall clock), and how
        # many times in a row they did not; bounded
        self._unanswered: OrderedDict[PeerId, tuple[float, int]] = OrderedDict()
        self._next_start = 0.0
        self.counters: Counter[str] = Counter()
        self.shards: KeyShards | None = None  # None: every peer (one head); else its head's shards
        self._seeding: dict[int, PeerId] = {}  # shard -> the peer outside ours visited as its seed
        self._seeded_from: OrderedDict[PeerId, None] = OrderedDict()  # table peers visited to reach our empty shards
        self._seeds_for: tuple[KeyShards | None, int] = (None, 0)  # those visits since our shards last changed

    # -- one visit ---------------------------------------------------------------

    def keys_for(self, peer: PeerId) -> list[bytes]:
        """One FIND_NODE key at each CPL 0..15 of ``peer``'s Kademlia key."""
        assert self._preimages is not None
        top = Key.for_peer(peer).value >> (256 - PREFIX_BITS)
        keys = []
        for cpl in range(CPLS):
            free = PREFIX_BITS - cpl - 1  # bits after the shared ones and the flipped one
            prefix = ((top >> free) ^ 1) << free | self._rng(free)
            keys.append(self._preimages[prefix])
        return keys

    async def visit(self, peer: PeerInfo) -> bool:
        """Crawl one peer; True when every request was answered."""
        self.counters["visits"] += 1
        named: list[PeerInfo] = []
        try:
            for key in self.keys_for(peer.peer_id):
                with anyio.fail_after(self.timeout):
                    reply = await self._messenger.request(peer, Message(MessageType.FIND_NODE, key=key))
                self.counters["requests"] += 1
                named.extend(p for p in reply.closer_peers[: amino.MAX_CLOSER_PEERS] if isinstance(p, PeerInfo))
        except (TimeoutError, NetworkError) as exc:
            self.counters["requests"] += 1
            self.counters["visits_failed"] += 1
            log.debug("crawl of %s failed: %s", peer.peer_id, exc)
            self._failed(peer)
            return False
        self.counters["visits_answered"] += 1
        self._answered(peer)
        self._discover(named)
        return True

    def _answered(self, peer: PeerInfo) -> None:
        if peer.peer_id not in self.table:
            if self.table.add(peer, self._clock(), seen_from=self._remote_addr(peer.peer_id)):
                self.counters["added"] += 1
            else:  # past the table's IP diversity limit: not visited again soon either
                self.counters["refused"] += 1
                self._forget_for_a_while(peer.peer_id)
                return
        self.table.mark_useful(peer.peer_id, self._clock())
        self.table.mark_crawled(peer.peer_id)
        self._retry_at.pop(peer.peer_id, None)
        self._unanswered.pop(peer.peer_id, None)

    def _failed(self, peer: PeerInfo) -> None:
        if peer.peer_id not in self.table:  # a discovered peer that does not answer never enters,
            self._forget_for_a_while(peer.peer_id)  # nor is it asked again soon
            return
        self.table.mark_failed(peer.peer_id)
        if peer.peer_id in self.table:
            self._retry_at[peer.peer_id] = self._wall() + self.retry_after
        else:
            self._retry_at.pop(peer.peer_id, None)
            self.counters["removed"] += 1

    def _forget_for_a_while(self, peer: PeerId) -> None:
        _until, misses = self._unanswered.pop(peer, (0.0, 0))
        wait = min(self.interval, self.retry_after * 2.0 ** min(misses, 32))
        self._unanswered[peer] = (self._wall() + wait, misses + 1)
        while len(self._unanswered) > MAX_DISCOVERED:
            self._unanswered.popitem(last=False)

    def _discover(self, named: list[PeerInfo]) -> None:
        for info in named:
            pid = info.peer_id
            if pid in self.table or pid in self._discovered or pid in self._in_flight:
                continue
            if self._unanswered.get(pid, (0.0, 0))[0] > self._wall():
                continue
            key = Key.for_peer(pid)
            if key == self.table.local_key:
                continue
            addrs = self._usable(info.addrs)
            if not addrs or not self._wanted(pid, key.value):
                continue
            self._discovered[pid] = PeerInfo(pid, addrs)
            self.counters["discovered"] += 1
            while len(self._discovered) > MAX_DISCOVERED:
                self._unseed(self._discovered.popitem(last=False)[0])

    def _wanted(self, pid: PeerId, key: int) -> bool:
        """A discovered peer is visited when it is in our shards, or as the seed of a
        shard the table knows no peer of (one seed per shard at a time)."""
        shards = self.shards
        if shards is None or key in shards:
            return True
        shard = shards.shard_of(key)
        if shard in self._seeding or self.table.count_under_prefix(shard, shards.bits):
            return False
        self._seeding[shard] = pid
        self.counters["seed_visits"] += 1
        return True

    def _seed_for_our_empty_shards(self) -> PeerInfo | None:
        """A table peer outside our shards to visit while one of them holds no peer."""
        shards = self.shards
        if shards is None or all(self.table.count_under_prefix(s, shards.bits) for s in shards.shards):
            return None
        seeded = self._seeds_for[1] if self._seeds_for[0] == shards else 0
        if seeded >= 2 * len(shards.shards):
            return None
        for info in self.table.crawl_queue(math.inf, 4 * CPLS):  # (a few: any live peer will do)
            pid = info.peer_id
            if pid not in self._seeded_from and not self.table.failures(pid) and Key.for_peer(pid).value not in shards:
                self._seeded_from[pid] = None
                self._seeds_for = (shards, seeded + 1)
                while len(self._seeded_from) > MAX_DISCOVERED:
                    self._seeded_from.popitem(last=False)
                self.counters["seed_visits"] += 1
                return info
        return None

    def _unseed(self, pid: PeerId) -> None:
        if self.shards is not None and pid in self._seeding.values():
            self._seeding.pop(self.shards.shard_of(Key.for_peer(pid).value), None)

    def _in_scope(self, pid: PeerId) -> bool:
        """Still to visit when popped: the shards may have changed since it was discovered."""
        if self.shards is None or pid in self._seeding.values():
            return True
        return Key.for_peer(pid).value in self.shards

    # -- scheduling --------------------------------------------------------------

    def next_batch(self, limit: int) -> list[PeerInfo]:
        """Who to visit next: discovered peers, then the table's due ones. They count as
        in flight until their visit ends (``_start_all``)."""
        batch: list[PeerInfo] = []
        while self._discovered and len(batch) < limit:
            info = self._discovered.popitem(last=False)[1]
            if self._in_scope(info.peer_id):
                batch.append(info)
        if len(batch) < limit:
            now = self._wall()
            wanted = limit + len(self._in_flight) + len(self._retry_at)
            for info in self.table.crawl_queue(now - self.interval, wanted, within=self.shards):
                if len(batch) >= limit:
                    break
                if info.peer_id in self._in_flight or self._retry_at.get(info.peer_id, 0.0) > now:
                    continue
                batch.append(info)
        if not batch and not self._in_flight and (seed := self._seed_for_our_empty_shards()) is not None:
            batch.append(seed)
        self._in_flight.update(p.peer_id for p in batch)  # chosen: not discovered again meanwhile
        return batch

    async def crawl_round(self, limit: int | None = None) -> int:
        """Visit one batch (at most ``limit``, default ``parallelism`` x 4) and wait for
        it; returns how many were visited. The building block of ``run``."""
        batch = self.next_batch(limit or self.parallelism * 4)
        async with anyio.create_task_group() as tg:
            await self._start_all(tg, batch, anyio.Semaphore(self.parallelism))
        return len(batch)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Crawl until cancelled, keeping ``parallelism`` visits going while any is due."""
        task_status.started()
        await self._ensure_preimages()
        limiter = anyio.Semaphore(self.parallelism)
        async with anyio.create_task_group() as tg:
            while True:
                batch = self.next_batch(self.parallelism)
                if not batch:
                    await self._idle()
                    continue
                await self._start_all(tg, batch, limiter)
                self.counters["rounds"] += 1

    async def _start_all(self, tg: anyio.abc.TaskGroup, batch: list[PeerInfo], limiter: anyio.Semaphore) -> None:
        await self._ensure_preimages()
        for info in batch:
            await self._pace()
            await limiter.acquire()
            tg.start_soon(self._visit_released, info, limiter)

    async def _visit_released(self, info: PeerInfo, limiter: anyio.Semaphore) -> None:
        try:
            await self.visit(info)
        finally:
            self._in_flight.discard(info.peer_id)
            self._unseed(info.peer_id)
            limiter.release()

    async def _idle(self) -> None:
        """Nothing is due: wait until the oldest visit is due again (at most IDLE_CHECK),
        or a peer enters the table (upkeep admits bootstrap peers and identified servers)."""
        due_in = self.table.next_crawl_due(self.shards) + self.interval - self._wall()
        size, shards = len(self.table), self.shards
        for _ in range(math.ceil(min(max(due_in, 1.0), IDLE_CHECK))):
            await anyio.sleep(1.0)
            if len(self.table) != size or self.shards != shards:
                return

    async def _pace(self) -> None:
        """At most ``rate`` visits start per second."""
        now = anyio.current_time()
        self._next_start = max(self._next_start, now)
        if self._next_start > now:
            await anyio.sleep(self._next_start - now)
        self._next_start += 1.0 / self.rate

    async def _ensure_preimages(self) -> None:
        if self._preimages is None:
            self._preimages = await anyio.to_thread.run_sync(prefix_preimages)

    # -- progress ----------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """Progress: the table's size, how much of it was crawled within the interval,
        who waits, and the counters."""
        peers = len(self.table)
        covered = self.table.crawled_since(self._wall() - self.interval)
        return {
            "peers": peers,
            "crawled_within_interval": covered,
            "coverage": round(covered / peers, 4) if peers else 0.0,
            "discovered_waiting": len(self._discovered),
            "retrying": len(self._retry_at),
            "in_flight": len(self._in_flight),
            **({"shards": sorted(self.shards.shards)} if self.shards is not None else {}),
            **dict(self.counters),
        }
