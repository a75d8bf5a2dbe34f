"""The sweep: provide many keys with few lookups, region by region.

Read this before changing the reprovider. It follows go-libp2p-kad-dht's
``provider.SweepingProvider`` (Kubo's default since 0.39), with the schedule kept in
SQL instead of a trie in memory.

Why. A provider record must reach the 20 servers closest to its key, and servers
forget it after 48 h, so a node reprovides every key every 22 h. One lookup per key
(the "naive" provider) costs ~10 s and dozens of messages each: a node falls behind
past ~10k keys. But every key under a keyspace prefix that holds at least 20 servers
has all 20 of its closest servers inside that prefix (they are XOR-closer than anyone
outside). Learn the servers of such a prefix once, and each key costs only its 20
ADD_PROVIDER messages.

Regions. A region is a prefix of the Kademlia key (SHA-256 of the multihash) holding
at least k = 20 servers, split as finely as that allows (``keyspace.minimal_regions``).
The table ``reprovide_regions`` holds the regions explored so far; they never overlap.

Exploring a region. ``find_closest_peers(target, 20)`` answers the 20 servers closest
to SHA-256(target). If the farthest answer shares m leading bits with the target, then
every server under the target's first m+1 bits is in the answer: that prefix is now
*covered* (``keyspace.covered_prefix``). The exploration repeats toward the uncovered
parts (*gaps*) of the region until none is left, then widens the region by one bit at
a time while it holds fewer than 20 servers. A FIND_NODE target is a preimage, so the
target for a gap is one of our own multihashes under it, or, when we have none there,
a sha2-256 multihash whose digest was searched for to hash into the gap (2^len tries,
a few thousand at real network sizes). At most 64 lookups, and it stops after two
lookups that find no new server (go's limits).

Sending. Each key of the region goes to its 20 closest servers among the region's
(``keyspace.allocate``, which hands out runs of keys rather than key by key). Each
server gets all its keys one ADD_PROVIDER message after the other, over the
messenger's one reused stream to it, with ``max_peers_in_flight`` servers at a time; a
server is given up after more than two failures in a row. A region is provided when at
least 20% of its servers took their records, else its keys are retried with backoff.
A region with at most two due keys is not explored: each key gets its own lookup.

Schedule. Every key has ``next_due_at``. The key overdue longest picks the next
region, so after downtime the oldest work goes first and a restart resumes exactly
where it stopped: a finished region's keys are due a whole interval later, an
unfinished one's are still due. Visiting a region sends every key of it that is due
before the region's next turn (``schedule.next_turn``, offset by prefix XOR the node's
order key), then sets their ``next_due_at`` to that turn. So new keys go out at once
(they are due when added), and a region's keys line up on its turn after their first
visit. A turn less than a ``grace`` (interval/128) away is taken now. A key whose last
provide is recent enough that the turn falls at most ``max_delay`` past a full interval
after it (one an earlier visit sent while the first visits still refine the regions)
is only moved to the turn, so no key goes out twice in a cycle. Failed keys count
``attempts``, keep ``last_error`` and come back after a doubling backoff; they are
reported as failing, never dropped.

Sharing. Several processes may share the store's provide list (``provider.claims``).
A visit first claims the slice of keys it will send: the region, or, when the region
holds more than ``claim_batch`` due keys, the part of it around the oldest key that
holds at most that many, so that several processes share a big region. Other
processes skip keys under a live claim; the claim is renewed while the visit runs and
released after its keys are marked, and a visit that loses its claim (the store was
unreachable past the lease) stops before marking anything. A process explores a
region once and reuses what it learnt for the region's other slices within the grace.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import anyio
from sqlalchemy.exc import SQLAlchemyError

from ..amino import BUCKET_SIZE, REPROVIDE_INTERVAL
from ..dht import DHT
from ..errors import NetworkError
from ..kadkey import BITS, Key
from ..network.api import KadMessenger
from ..routing.api import RoutingError
from ..types import Message, MessageType, PeerInfo
from .api import FAILING_AFTER_ATTEMPTS
from .claims import ClaimStore
from .keyspace import (
    Prefix,
    allocate,
    common_prefix_length,
    covered_prefix,
    gaps,
    intersection,
    minimal_regions,
)
from .providelist import KeyRow, ProvideListStore, RegionRow
from .schedule import next_turn, retry_delay

log = logging.getLogger(__name__)

SHA2_256_HEADER = b"\x12\x20"
# Searching a preimage for a longer prefix than this would cost too much CPU; such a
# gap is left to the region's own keys.
MAX_MINED_PREFIX_BITS = 20


# When even the first lookup fails, the keys under this many bits of the key back off together.
UNEXPLORED_FAILURE_BITS = 8
# A visit that loses the race for its slice to another process looks for other work this many times.
CLAIM_ATTEMPTS = 3
CLAIM_LEASE = 300.0  # seconds: a dead process's slice is taken over this long after its last renewal


class ExploreError(Exception):
    """A region could not be explored (the lookups failed or found nobody)."""


class ClaimLost(Exception):
    """The visit's claim could not be renewed: another process may own its slice now."""


@dataclass(frozen=True, slots=True)
class SweepConfig:
    interval: float = REPROVIDE_INTERVAL.total_seconds()
    replication: int = BUCKET_SIZE
    max_peers_in_flight: int = 20  # go: maxProvideConnsPerWorker
    send_timeout: float = 10.0  # per ADD_PROVIDER (go: DefaultSendProviderRecordTimeout)
    min_reachable_ratio: float = 0.2  # go: minimalRegionReachablePeersRatio
    individual_threshold: int = 2  # go: individualProvideThreshold
    max_failure_streak: int = 2  # go: maxConsecutiveProvideFailuresAllowed
    max_exploration_lookups: int = 64  # go: maxExplorationPrefixSearches
    max_stale_lookups: int = 2  # go: maxConsecutiveNoFreshPeers
    retry_after: float = 300.0  # go retries failed work every 5 min; we double from there
    max_retry_after: float = 3600.0
    claim_lease: float = CLAIM_LEASE
    # A PING after this many ADD_PROVIDERs to one peer: its backlog stays short (servers
    # rate-limit each peer, ours to 200 requests/s), so the PING is answered in time.
    confirm_every: int = 256
    claim_batch: int = 2_000  # a region with more due keys than this is shared out in slices

    @property
    def grace(self) -> float:
        """A region whose turn is this close is provided now rather than twice."""
        return self.interval / 128

    @property
    def max_delay(self) -> float:
        """How far past one interval a key's next provide may fall (1 h at 22 h, go's
        ``DefaultMaxReprovideDelay``); records live 48 h, far longer."""
        return self.interval / 22


@dataclass(frozen=True, slots=True)
class VisitReport:
    """One region visit: what was sent and what it cost."""

    prefix: Prefix
    keys: int
    provided: int  # keys whose region reached enough servers
    failed: int
    peers: int
    peers_reached: int
    lookups: int
    messages: int
    individual: bool
    error: str | None = None


@dataclass(slots=True)
class SweepCounters:
    lookups: int = 0
    messages: int = 0
    message_failures: int = 0
    keys_provided: int = 0
    keys_failed: int = 0
    visits: int = 0
    by_region_failures: int = 0


@dataclass(slots=True)
class _Exploration:
    region: Prefix
    peers: dict[int, PeerInfo] = field(default_factory=dict)
    covered: list[Prefix] = field(default_factory=list)
    lookups: int = 0


def preimage_under(prefix: Prefix) -> bytes:
    """A sha2-256 multihash whose SHA-256 lies under ``prefix`` (deterministic search)."""
    if prefix.length > MAX_MINED_PREFIX_BITS:
        raise ValueError(f"prefix of {prefix.length} bits is too long to search a preimage for")
    base = hashlib.sha256(f"dhtstore-explore/{prefix}".encode()).digest()
    shift = 256 - prefix.length
    for i in range(1 << (prefix.length + 6)):
        candidate = SHA2_256_HEADER + hashlib.sha256(base + i.to_bytes(8, "big")).digest()
        if int.from_bytes(hashlib.sha256(candidate).digest(), "big") >> shift == prefix.bits:
            return candidate
    raise ValueError(f"no preimage found under {prefix}")  # p < e^-64


class Sweep:
    """Visits due regions one at a time. Holds the explored regions in memory (a few
    hundred at most) mirrored in ``reprovide_regions``; everything else is read from
    the store at each visit, so CLI edits between visits are seen."""

    def __init__(
        self,
        store: ProvideListStore,
        dht: DHT,
        messenger: KadMessenger,
        self_info: Callable[[], PeerInfo],
        *,
        order: int,
        cycle_start: int,
        prefix_len: int | None,
        config: SweepConfig,
        clock: Callable[[], float],
        on_region: Callable[[Prefix], None] | None = None,
    ):
        self.clock = clock
        self.store = store
        self.claims = ClaimStore(store.engine)
        self.on_region = on_region
        self.dht = dht
        self.messenger = messenger
        self.self_info = self_info
        self.order = order
        self.cycle_start = cycle_start
        self.config = config
        self.prefix_len = prefix_len
        self.counters = SweepCounters()
        self._regions: list[RegionRow] = []
        self._explored: tuple[float, _Exploration] | None = None  # (when, what): reused within the grace
        self._claim_lost = False

    @property
    def owner(self) -> str:
        """Who claims this process's work: its peer id."""
        return str(self.self_info().peer_id)

    # --- regions in memory ---------------------------------------------------------

    @property
    def regions(self) -> list[RegionRow]:
        return list(self._regions)

    def region_of(self, kad: int) -> RegionRow | None:
        for g in self._regions:  # a few hundred, sorted; a visit is rare next to its network work
            if g.prefix.contains(kad):
                return g
            if g.prefix.first > kad:
                return None
        return None

    def _free_prefix(self, kad: int, length: int) -> Prefix:
        """The prefix of ``kad`` of ``length`` bits, lengthened until it holds no explored region."""
        p = Prefix.of(kad, length)
        for g in self._regions:
            if p.covers(g.prefix):
                length = max(length, common_prefix_length(g.prefix.first, kad) + 1)
        return Prefix.of(kad, length)

    def _turn(self, prefix: Prefix, now: float) -> int:
        c = self.config
        return math.ceil(next_turn(prefix, self.order, c.interval, self.cycle_start, now + c.grace))

    # --- one visit ----------------------------------------------------------------------

    async def visit(self, now: float) -> VisitReport | None:
        """Provide the region of the key overdue longest, if any key is due at ``now``
        that no other process has claimed."""
        lookups_before = self.counters.lookups
        for _ in range(CLAIM_ATTEMPTS):
            oldest = await self.store.oldest_due(int(now), self.owner)
            if oldest is None:
                return None
            kad, _due = oldest
            self._regions = sorted(await self.store.regions(), key=lambda g: g.prefix.first)  # others refine them too
            found = await self._start_of(kad)
            # No estimate of region sizes yet: back off a slice of the keyspace, not the
            # whole list (which may be millions of keys) at once.
            start, seed = found or (Prefix.of(kad, UNEXPLORED_FAILURE_BITS), None)
            piece = await self._slice(start, kad, now, await self.claimed_by_others(now))
            if await self.claims.claim(piece, self.owner, int(now), math.ceil(self.config.claim_lease)):
                break
        else:
            return None  # other processes are busy with the due work
        self.counters.visits += 1
        if self.on_region is not None:
            self.on_region(piece)
        async with self._claimed(piece):
            try:
                if found is None:
                    report = await self._fail_prefix(piece, now, "lookup found no peers")
                else:
                    report = await self._visit(start, piece, seed, now)
            except ClaimLost:
                report = VisitReport(piece, 0, 0, 0, 0, 0, 0, 0, individual=False, error=f"claim on {piece} lost")
        return replace(report, lookups=self.counters.lookups - lookups_before)

    async def claimed_by_others(self, now: float) -> list[Prefix]:
        """The slices other processes sharing the store are providing now."""
        return [c.prefix for c in await self.claims.live(int(now)) if c.owner != self.owner]

    async def _start_of(self, kad: int) -> tuple[Prefix, tuple[bytes, list[PeerInfo]] | None] | None:
        """The region to visit for ``kad``, and the lookup already made toward it if one
        was needed to estimate region sizes; None if that lookup found nobody."""
        region = self.region_of(kad)
        if region is not None:
            return region.prefix, None
        seed = None
        if self.prefix_len is None:
            seed = await self._estimate_prefix_len(kad)
            if seed is None:
                return None
        assert self.prefix_len is not None
        return self._free_prefix(kad, self.prefix_len), seed

    async def _slice(self, region: Prefix, kad: int, now: float, others: Sequence[Prefix]) -> Prefix:
        """The largest prefix of ``kad`` under ``region`` that holds at most
        ``claim_batch`` due keys and no slice ``others`` claimed (``kad`` is under none)."""
        batch = self.config.claim_batch
        turn = self._turn(region, now)
        piece = region
        while piece.length < BITS and (
            any(piece.covers(o) for o in others) or await self.store.count_due(piece, turn, batch + 1) > batch
        ):
            piece = Prefix.of(kad, piece.length + 1)
        return piece

    @asynccontextmanager
    async def _claimed(self, piece: Prefix) -> AsyncIterator[None]:
        """Keep the claim on ``piece`` renewed while the body runs; release it after."""
        lease = math.ceil(self.config.claim_lease)
        self._claim_lost = False

        async def renew() -> None:
            while True:
                await anyio.sleep(lease / 3)
                try:
                    kept = await self.claims.renew(piece, self.owner, int(self.clock()), lease)
                except (SQLAlchemyError, OSError) as exc:
                    log.info("could not renew the claim on %s: %s", piece, exc)
                    continue  # the lease still runs; the next renewal may get through
                if not kept:
                    log.warning("the claim on %s was taken over; leaving its keys to the new owner", piece)
                    self._claim_lost = True
                    return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(renew)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.claims.release(piece, self.owner)
                except (SQLAlchemyError, OSError) as exc:  # it expires on its own
                    log.info("could not release the claim on %s: %s", piece, exc)

    async def _visit(self, start: Prefix, piece: Prefix, seed: tuple[bytes, list[PeerInfo]] | None, now: float) -> VisitReport:
        few = await self.store.due_keys(piece, self._turn(start, now), limit=self.config.individual_threshold + 1)
        if len(few) <= self.config.individual_threshold:
            return await self._individual(start, few, now, dict([seed]) if seed else {})
        try:
            found = self._recently_explored(start, now) or await self._explore(start, seed)
        except ExploreError as exc:
            return await self._fail_prefix(piece, now, str(exc))
        self._explored = (now, found)
        return await self._provide_explored(found, piece, now)

    def _recently_explored(self, start: Prefix, now: float) -> _Exploration | None:
        if self._explored is None:
            return None
        at, ex = self._explored
        return ex if ex.region.covers(start) and now - at < self.config.grace else None

    async def _estimate_prefix_len(self, kad: int) -> tuple[bytes, list[PeerInfo]] | None:
        """One lookup toward an overdue key: all k answers share its first m bits, so a
        prefix of m bits holds at least k servers (go's ``approxPrefixLen``)."""
        mh = await self._some_key(Prefix.of(kad, 256))
        answer = await self._lookup(mh)
        if not answer:
            return None
        self.prefix_len = covered_prefix_len(kad, answer)
        return mh, answer

    async def _some_key(self, prefix: Prefix) -> bytes:
        return await self.store.any_key(prefix) or preimage_under(prefix)

    async def _lookup(self, target: bytes) -> list[PeerInfo]:
        self.counters.lookups += 1
        try:
            return list(await self.dht.find_closest_peers(target, self.config.replication))
        except (RoutingError, NetworkError, TimeoutError, OSError) as exc:
            log.info("lookup for %s failed: %s", target.hex()[:16], exc)
            return []

    # --- exploring ----------------------------------------------------------------------

    async def _explore(self, start: Prefix, seed: tuple[bytes, list[PeerInfo]] | None) -> _Exploration:
        c = self.config
        ex = _Exploration(region=start)
        stale = 0
        while ex.lookups < c.max_exploration_lookups:
            todo = gaps(ex.region, ex.covered)
            if not todo:
                if ex.region.length == 0 or self._count_under(ex, ex.region) >= c.replication:
                    break
                ex.region = ex.region.parent()
                continue
            if seed is not None:
                target, answer = seed
                seed = None
            else:
                target = await self._target_in(todo[0])
                if target is None:  # a gap too fine to search a preimage for: leave it
                    ex.covered.append(todo[0])
                    continue
                answer = await self._lookup(target)
                ex.lookups += 1
            fresh = 0
            for p in answer:
                key = Key.for_peer(p.peer_id).value
                if key not in ex.peers:
                    ex.peers[key] = p
                    fresh += 1
            covered = covered_prefix(Key.for_multihash(target).value, [Key.for_peer(p.peer_id).value for p in answer])
            if covered is None:
                raise ExploreError(f"lookups in region {start} found no peers")
            ex.covered.append(covered)
            stale = 0 if fresh else stale + 1
            if stale >= c.max_stale_lookups:
                break
        while ex.region.length > 0 and self._count_under(ex, ex.region) < c.replication:
            ex.region = ex.region.parent()
        if not ex.peers:
            raise ExploreError(f"region {start} has no reachable peers")
        return ex

    async def _target_in(self, gap: Prefix) -> bytes | None:
        mh = await self.store.any_key(gap)
        if mh is not None:
            return mh
        if gap.length > MAX_MINED_PREFIX_BITS:
            return None
        return preimage_under(gap)

    @staticmethod
    def _count_under(ex: _Exploration, prefix: Prefix) -> int:
        return sum(1 for k in ex.peers if prefix.contains(k))

    async def _provide_explored(self, ex: _Exploration, piece: Prefix, now: float) -> VisitReport:
        """Send the due keys under ``piece`` (the claimed slice) to the explored region's servers."""
        c = self.config
        inside = sorted(k for k in ex.peers if ex.region.contains(k))
        parts = minimal_regions(ex.region, inside, c.replication)
        total = VisitReport(piece, 0, 0, 0, 0, 0, 0, 0, individual=False)
        new_rows: list[RegionRow] = []
        for part in parts:
            turn = self._turn(part, now)
            mine = intersection(part, piece)
            if mine is None:
                new_rows.append(RegionRow(part, turn, None, 0, None))
                continue
            # Keys an earlier visit sent (while the regions were being refined) only
            # move to this region's turn if that is within an interval (and the
            # slack) of their last provide; they do not go out twice in a cycle.
            fresh = math.floor(turn - c.interval - c.max_delay)
            keys = await self.store.due_keys(mine, turn, provided_before=fresh)
            await self.store.realign(mine, turn, fresh, turn)
            peer_keys = [k for k in inside if part.contains(k)]
            peers = [ex.peers[k] for k in peer_keys]
            reached, messages = await self._send(keys, peer_keys, peers)
            ok = bool(peers) and reached >= c.min_reachable_ratio * len(peers)
            attempts = 0
            error = None
            if ok or not keys:
                await self._provided([k.multihash for k in keys], now, turn)
            else:
                error = f"reached {reached} of {len(peers)} peers of region {part}"
                attempts = await self._failed([k.multihash for k in keys], now, error)
            new_rows.append(RegionRow(part, turn, int(now), attempts, error))
            total = VisitReport(
                piece,
                total.keys + len(keys),
                total.provided + (len(keys) if ok else 0),
                total.failed + (0 if ok else len(keys)),
                total.peers + len(peers),
                total.peers_reached + reached,
                0,
                total.messages + messages,
                individual=False,
                error=error or total.error,
            )
        await self.store.replace_regions(ex.region, new_rows)
        self._regions = sorted(
            [g for g in self._regions if not ex.region.covers(g.prefix)] + new_rows, key=lambda g: g.prefix.first
        )
        self.prefix_len = round(sum(g.prefix.length for g in self._regions) / len(self._regions))
        return total

    # --- sending ------------------------------------------------------------------------

    async def _send(self, keys: Sequence[KeyRow], peer_keys: Sequence[int], peers: Sequence[PeerInfo]) -> tuple[int, int]:
        """Send every key to its k closest of ``peers``; return (peers reached, messages sent)."""
        if not keys or not peers:
            return 0, 0
        allocation = allocate([k.kad for k in keys], peer_keys, self.config.replication)
        reached = 0
        messages = 0
        limiter = anyio.CapacityLimiter(self.config.max_peers_in_flight)
        provider = self.self_info()

        async def to_peer(index: int) -> None:
            nonlocal reached, messages
            async with limiter:
                sent, ok = await self._send_to_peer(peers[index], provider, keys, allocation[index])
            messages += sent
            reached += ok

        async with anyio.create_task_group() as tg:
            for index in allocation:
                tg.start_soon(to_peer, index)
        return reached, messages

    async def _send_to_peer(
        self, peer: PeerInfo, provider: PeerInfo, keys: Sequence[KeyRow], slices: Sequence[tuple[int, int]]
    ) -> tuple[int, bool]:
        """ADD_PROVIDER for each allotted key, one after the other on the peer's stream,
        with a PING every ``confirm_every`` of them and after the last."""
        c = self.config
        sent = errors = streak = unconfirmed = 0
        for start, stop in slices:
            for i in range(start, stop):
                if self._claim_lost:
                    return sent, False
                message = Message(MessageType.ADD_PROVIDER, key=keys[i].multihash, provider_peers=(provider,))
                sent += 1
                self.counters.messages += 1
                try:
                    with anyio.fail_after(c.send_timeout):
                        await self.messenger.send(peer, message)
                    streak = 0
                    unconfirmed += 1
                except (NetworkError, TimeoutError, OSError) as exc:
                    errors += 1
                    streak += 1
                    self.counters.message_failures += 1
                    if streak > c.max_failure_streak:
                        log.debug("giving up on %s after %d failures: %s", peer.peer_id, streak, exc)
                        return sent, False
                if unconfirmed >= c.confirm_every:
                    if not await self._processed(peer):
                        return sent, False
                    unconfirmed = 0
        return sent, errors < sent and (unconfirmed == 0 or await self._processed(peer))

    async def _processed(self, peer: PeerInfo) -> bool:
        """ADD_PROVIDER gets no reply, and a sent message may still sit in a buffer (or a
        rate limiter) when we move on. A PING on the same stream, answered in order by
        go, js and us, proves the peer has processed every ADD_PROVIDER before it: keys
        are marked provided only once all are confirmed, so a crash never marks a key
        whose records were lost in flight."""
        try:
            with anyio.fail_after(self.config.send_timeout):
                await self.messenger.request(peer, Message(MessageType.PING))
        except (NetworkError, TimeoutError, OSError) as exc:
            log.debug("%s did not confirm its ADD_PROVIDERs: %s", peer.peer_id, exc)
            return False
        return True

    # --- keys one by one -----------------------------------------------------------------

    async def _individual(
        self, prefix: Prefix, keys: Sequence[KeyRow], now: float, answered: dict[bytes, list[PeerInfo]]
    ) -> VisitReport:
        """One lookup per key (``answered``: lookups already made, by target)."""
        c = self.config
        turn = self._turn(prefix, now)
        report = VisitReport(prefix, len(keys), 0, 0, 0, 0, 0, 0, individual=True)
        for key in keys:
            answer = answered.get(key.multihash) or await self._lookup(key.multihash)
            peer_keys = sorted(Key.for_peer(p.peer_id).value for p in answer)
            by_key = {Key.for_peer(p.peer_id).value: p for p in answer}
            peers = [by_key[k] for k in peer_keys]
            reached, messages = await self._send([key], peer_keys, peers)
            ok = bool(peers) and reached >= c.min_reachable_ratio * len(peers)
            error = None
            if ok:
                await self._provided([key.multihash], now, turn)
            else:
                error = f"reached {reached} of {len(peers)} peers for {key.multihash.hex()[:16]}…"
                await self._failed([key.multihash], now, error)
            report = VisitReport(
                prefix,
                report.keys,
                report.provided + ok,
                report.failed + (not ok),
                report.peers + len(peers),
                report.peers_reached + reached,
                0,
                report.messages + messages,
                individual=True,
                error=error or report.error,
            )
        return report

    # --- outcomes -------------------------------------------------------------------------

    async def _provided(self, multihashes: Sequence[bytes], now: float, turn: int) -> None:
        if self._claim_lost:  # the new owner sends them; marking them here would skip its visit
            raise ClaimLost
        await self.store.mark_provided(multihashes, int(now), turn)
        self.counters.keys_provided += len(multihashes)

    async def _failed(self, multihashes: Sequence[bytes], now: float, error: str) -> int:
        """Back the keys off; returns their new attempt count."""
        if self._claim_lost:
            raise ClaimLost
        c = self.config
        attempts = await self.store.max_attempts(multihashes) + 1
        retry_at = math.ceil(now + retry_delay(attempts, c.retry_after, c.max_retry_after))
        await self.store.mark_failed(multihashes, error, retry_at)
        self.counters.keys_failed += len(multihashes)
        self.counters.by_region_failures += 1
        # Every failure is logged quietly; crossing into "failing" is reported once.
        level = logging.WARNING if attempts == FAILING_AFTER_ATTEMPTS else logging.INFO
        log.log(level, "provide failed for %d keys (attempt %d, retrying in %ds): %s", len(multihashes), attempts, retry_at - int(now), error)
        return attempts

    async def _fail_prefix(self, prefix: Prefix, now: float, error: str) -> VisitReport:
        keys = await self.store.due_keys(prefix, self._turn(prefix, now))
        if keys:
            await self._failed([k.multihash for k in keys], now, error)
        return VisitReport(prefix, len(keys), 0, len(keys), 0, 0, 0, 0, individual=False, error=error)


def covered_prefix_len(kad: int, answer: Sequence[PeerInfo]) -> int:
    """The number of leading bits all of ``answer`` share with ``kad`` (0 for fewer than two answers)."""
    if len(answer) < 2:
        return 0
    return min(common_prefix_length(kad, Key.for_peer(p.peer_id).value) for p in answer)
