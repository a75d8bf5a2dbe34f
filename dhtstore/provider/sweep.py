"""The sweep: provide many keys with few lookups, region by region.

It follows go-libp2p-kad-dht's ``provider.SweepingProvider`` (Kubo's default since
0.39), with the schedule kept in the store instead of a trie in memory. The decisions
are ``provider.planner``'s (no I/O); this module is the driver around them: it reads
the store, makes the lookups, sends the messages and writes the outcomes.

Words. A *prefix* is the first bits of a Kademlia key (SHA-256 of the multihash): a
part of the keyspace (``keyspace.Prefix``). A *region* is a prefix holding at least
k = 20 servers, split as finely as that allows (``keyspace.minimal_regions``); regions
never overlap, and the store's ``reprovide_regions`` holds those explored so far. A
*slice* is the prefix one visit claims and provides: a region, or a finer prefix of it
when the region holds many due keys, so several processes share it.

Why regions. A provider record must reach the 20 servers closest to its key, and
servers forget it after 48 h, so a node reprovides every key every 22 h. One lookup
per key costs ~10 s and dozens of messages: a node falls behind past ~10k keys. But
every key under a region has all 20 of its closest servers inside the region (they
are XOR-closer than anyone outside). Learn a region's servers once, and each key
costs only its 20 ADD_PROVIDER messages.

Exploring a region. ``find_closest_peers(target, 20)`` answers the 20 servers closest
to SHA-256(target). If the farthest answer shares m leading bits with the target, then
every server under the target's first m+1 bits is in the answer: that prefix is now
*covered* (``keyspace.covered_prefix``). The exploration repeats toward the uncovered
prefixes (*gaps*) of the region until none is left, then widens the region by one bit
at a time while it holds fewer than 20 servers. A FIND_NODE target is a preimage, so
the target for a gap is one of our own multihashes under it, or, when we have none
there, a mined sha2-256 multihash that hashes into the gap (``kadkey.preimage_with_prefix``).
At most 64 lookups, stopping after two in a row that find no new server (go's
``maxExplorationPrefixSearches``, ``maxConsecutiveNoFreshPeers``).

Sending. Each key of the slice goes to its 20 closest servers of the region
(``keyspace.allocate``, which hands out runs of keys rather than key by key). Each
server gets all its keys one ADD_PROVIDER after the other, over the messenger's one
reused stream to it, with ``max_peers_in_flight`` servers at a time, and a FIND_NODE on
that stream confirms them (``planner.PeerSending``). A region is provided when at least 20%
of its servers confirmed their records (``planner.Outcome``). Keys that reached no server
are retried with backoff; keys sent but unconfirmed are retried too, at most
``max_sends_per_cycle`` times in a row, then left to their next turn
(``planner.retry``), so servers that never confirm do not get them again and again. A region
with at most two due keys is not explored: each key gets its own lookup (go's
``individualProvideThreshold``).

Schedule. Every key has ``next_due_at``. The key overdue longest picks the next slice
(after the other due slices of the region explored last), so after downtime the oldest
work goes first and a restart resumes where it stopped: a
finished slice's keys are due a whole interval later, an unfinished one's are still
due. Visiting a slice sends every key of it due before its region's next turn
(``planner.Turns``: go's ``reprovideTimeForPrefix``, offset by prefix XOR the node's
order key), then sets their ``next_due_at`` to that turn. New keys are due when added,
so they go out at once, and line up on their region's turn after the first visit; a
key an earlier visit sent while the regions were still being refined only moves to the
turn (``planner.plan_parts``), so no key goes out twice in a cycle; such a key's next
turn may come up to ``max_delay`` past a whole interval after its last provide (go's
``maxReprovideDelay``). Failed keys count ``attempts``, keep ``last_error`` and come
back after a doubling backoff (or at their next turn, above); they are reported as
failing, never dropped.

Sharing. Several processes may share the store's provide list (``provider.claims``).
A visit first claims its slice. Other processes skip keys under a live claim; the
claim is renewed while the visit runs and released after its keys are marked, and a
visit that loses its claim (the store was unreachable past the lease) stops before
marking anything. A process explores a region once and reuses what it learnt for the
region's other slices within the grace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import anyio

from ..dht import DHT
from ..errors import NetworkError, StoreError
from ..kadkey import BITS, Key
from ..network.api import KadMessenger
from ..routing.api import RoutingError
from ..routingtable.api import PrefixCounts
from ..types import Message, MessageType, PeerInfo
from .api import (
    FAILING_AFTER_ATTEMPTS,
    ClaimStore,
    KeyRow,
    ProvideList,
    RegionRow,
    SweepConfig,
    VisitReport,
)
from .keyspace import Prefix, allocate
from .planner import (
    CLAIM_ATTEMPTS,
    MAX_MINED_PREFIX_BITS,
    Delivery,
    Exploration,
    ExploreError,
    Outcome,
    PartPlan,
    PeerSending,
    Retry,
    Turns,
    answer_servers,
    attempt_error,
    attempt_report,
    combine,
    covered_prefix_len,
    free_prefix,
    mean_prefix_len,
    narrower,
    part_row,
    plan_parts,
    preimage_under,
    region_of,
    replace_regions,
    retry,
    reusable,
    sort_regions,
    too_big,
    unexplored_failure_prefix,
)

log = logging.getLogger(__name__)

Seed = tuple[bytes, list[PeerInfo]]  # a lookup already made: its target and answer


class ClaimLost(Exception):
    """The visit's claim could not be renewed: another process may own its slice now."""


@dataclass(slots=True)
class SweepCounters:
    lookups: int = 0
    messages: int = 0
    message_failures: int = 0
    keys_provided: int = 0
    keys_unconfirmed: int = 0
    keys_deferred: int = 0
    keys_failed: int = 0
    visits: int = 0
    by_region_failures: int = 0


class Sweep:
    """Visits due slices one at a time. Holds the explored regions in memory (a few
    hundred at most) mirrored in the store; everything else is read from the store at
    each visit, so CLI edits between visits are seen."""

    def __init__(
        self,
        store: ProvideList,
        claims: ClaimStore,
        dht: DHT,
        messenger: KadMessenger,
        self_info: Callable[[], PeerInfo],
        *,
        order: int,
        cycle_start: int,
        prefix_len: int | None,
        config: SweepConfig,
        clock: Callable[[], float],
        on_slice: Callable[[Prefix], None] | None = None,
        region_sizes: PrefixCounts | None = None,
    ):
        self.clock = clock
        self.region_sizes = region_sizes
        self.store = store
        self.claims = claims
        self.on_slice = on_slice
        self.dht = dht
        self.messenger = messenger
        self.self_info = self_info
        self.turns = Turns(order=order, cycle_start=cycle_start, config=config)
        self.config = config
        self.prefix_len = prefix_len
        self.counters = SweepCounters()
        self._regions: list[RegionRow] = []
        self._explored: tuple[float, Exploration] | None = None  # (when, what): reused within the grace
        self._claim_lost = False

    @property
    def owner(self) -> str:
        """Who claims this process's work: its peer id."""
        return str(self.self_info().peer_id)

    @property
    def regions(self) -> list[RegionRow]:
        return list(self._regions)

    # --- one visit ----------------------------------------------------------------------

    async def visit(self, now: float) -> VisitReport | None:
        """Provide the slice of the key overdue longest, if any key is due at ``now``
        that no other process has claimed."""
        lookups_before = self.counters.lookups
        for _ in range(CLAIM_ATTEMPTS):
            kad = await self._next_key(now)
            if kad is None:
                return None
            self._regions = sort_regions(await self.store.regions())  # others refine them too
            found = await self._start_of(kad)
            start, seed = found or (unexplored_failure_prefix(kad), None)
            piece = await self._slice(start, kad, now, await self.claimed_by_others(now))
            if await self.claims.claim(piece, self.owner, int(now), math.ceil(self.config.claim_lease)):
                break
        else:
            return None  # other processes are busy with the due work
        self.counters.visits += 1
        if self.on_slice is not None:
            self.on_slice(piece)
        async with self._claimed(piece):
            try:
                if found is None:
                    report = await self._fail_prefix(piece, now, "lookup found no peers")
                else:
                    report = await self._visit(start, piece, seed, now)
            except ClaimLost:
                report = VisitReport(prefix=piece, error=f"claim on {piece} lost")
        return replace(report, lookups=self.counters.lookups - lookups_before)

    async def _next_key(self, now: float) -> int | None:
        """The key whose slice to visit: one still due in the region explored last, so a
        region's slices go one after the other on one exploration, else the key overdue
        longest. Keys due at the same second (an import) lie all over the keyspace: taken
        in the store's order, each slice would be in another region and explore it again."""
        explored = self._explored
        if explored is not None and now - explored[0] < self.config.grace:
            kad = await self.store.due_under(explored[1].region, int(now), self.owner)
            if kad is not None:
                return kad
        oldest = await self.store.oldest_due(int(now), self.owner)
        return None if oldest is None else oldest[0]

    async def claimed_by_others(self, now: float) -> list[Prefix]:
        """The slices other processes sharing the store are providing now."""
        return [c.prefix for c in await self.claims.live(int(now)) if c.owner != self.owner]

    async def _start_of(self, kad: int) -> tuple[Prefix, Seed | None] | None:
        """The region to visit for ``kad``, and the lookup already made toward it if one
        was needed to estimate region sizes; None if that lookup found nobody."""
        region = region_of(self._regions, kad)
        if region is not None:
            return region.prefix, None
        exact = self._exact_prefix_len(kad)
        if exact is not None:
            return free_prefix(self._regions, kad, exact), None
        seed = None
        if self.prefix_len is None:
            seed = await self._estimate_prefix_len(kad)
            if seed is None:
                return None
        assert self.prefix_len is not None
        return free_prefix(self._regions, kad, self.prefix_len), seed

    async def _slice(self, region: Prefix, kad: int, now: float, others: Sequence[Prefix]) -> Prefix:
        """The largest prefix of ``kad`` under ``region`` that holds no slice ``others``
        claimed and at most ``claim_batch`` due keys."""
        turn = self.turns.next(region, now)
        piece = region
        while True:
            finer = narrower(piece, kad, others)
            if finer is None:
                if not too_big(piece, await self.store.count_due(piece, turn, self.config.claim_batch + 1), self.config):
                    return piece
                finer = Prefix.of(kad, piece.length + 1)
            piece = finer

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
                except StoreError as exc:
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
                except StoreError as exc:  # it expires on its own
                    log.info("could not release the claim on %s: %s", piece, exc)

    async def _visit(self, start: Prefix, piece: Prefix, seed: Seed | None, now: float) -> VisitReport:
        c = self.config
        few = await self.store.due_keys(piece, self.turns.next(start, now), limit=c.individual_threshold + 1)
        if len(few) <= c.individual_threshold:
            return await self._individual(start, few, now, dict([seed]) if seed else {})
        try:
            found = reusable(self._explored, start, now, c) or await self._explore(start, seed)
        except ExploreError as exc:
            return await self._fail_prefix(piece, now, str(exc))
        self._explored = (now, found)
        return await self._provide_explored(found, piece, now)

    def _exact_prefix_len(self, kad: int) -> int | None:
        """With a table of the whole network: the longest prefix of ``kad`` that holds
        ``replication`` servers, counted in the table (no lookup, and no estimate that a
        crawl in progress can throw off: kubo#11085). None without such a table, or
        while it holds fewer servers than that (just started): then the estimate."""
        sizes, k = self.region_sizes, self.config.replication
        if sizes is None or len(sizes) < k:
            return None
        length = 0
        while length < BITS and sizes.count_under_prefix(kad >> (BITS - length - 1), length + 1) >= k:
            length += 1
        self.prefix_len = length  # persisted as the estimate, for a restart without the table
        return length

    async def _estimate_prefix_len(self, kad: int) -> Seed | None:
        """One lookup toward an overdue key: all k answers share its first m bits, so a
        prefix of m bits holds at least k servers."""
        # The key itself; if it was removed meanwhile, a target sharing its first
        # MAX_MINED_PREFIX_BITS bits gives the same estimate.
        mh = await self.store.any_key(Prefix.of(kad, BITS)) or preimage_under(Prefix.of(kad, MAX_MINED_PREFIX_BITS))
        answer = await self._lookup(mh)
        if not answer:
            return None
        self.prefix_len = covered_prefix_len(kad, [Key.for_peer(p.peer_id).value for p in answer])
        return mh, answer

    async def _lookup(self, target: bytes) -> list[PeerInfo]:
        self.counters.lookups += 1
        try:
            return list(await self.dht.find_closest_peers(target, self.config.replication))
        except (RoutingError, NetworkError, TimeoutError, OSError) as exc:
            log.info("lookup for %s failed: %s", target.hex()[:16], exc)
            return []

    # --- exploring ----------------------------------------------------------------------

    async def _explore(self, start: Prefix, seed: Seed | None) -> Exploration:
        ex = Exploration(start, self.config)
        gap = ex.next_gap()
        while gap is not None:
            if seed is not None:
                target, answer = seed
                seed = None
                ex.record(Key.for_multihash(target).value, answer, counted=False)
            else:
                mh = await self._target_in(gap)
                if mh is None:
                    ex.skip(gap)
                else:
                    ex.record(Key.for_multihash(mh).value, await self._lookup(mh))
            gap = ex.next_gap()
        return ex.finish()

    async def _target_in(self, gap: Prefix) -> bytes | None:
        """A lookup target under ``gap``: one of our keys, else a mined preimage, else
        None (too fine to mine)."""
        mh = await self.store.any_key(gap)
        if mh is not None or gap.length > MAX_MINED_PREFIX_BITS:
            return mh
        return preimage_under(gap)

    async def _provide_explored(self, ex: Exploration, piece: Prefix, now: float) -> VisitReport:
        """Send the due keys of the slice ``piece`` to the explored region's servers."""
        total = VisitReport(prefix=piece)
        rows: list[RegionRow] = []
        for plan in plan_parts(ex, piece, self.turns, now):
            if plan.mine is None:
                rows.append(part_row(plan, now, 0, None))
                continue
            report, attempts = await self._provide_part(plan, plan.mine, now)
            rows.append(part_row(plan, now, attempts, report.error))
            total = combine(total, report)
        await self.store.replace_regions(ex.region, rows)
        self._regions = replace_regions(self._regions, ex.region, rows)
        self.prefix_len = mean_prefix_len(self._regions)
        return total

    async def _provide_part(self, plan: PartPlan, mine: Prefix, now: float) -> tuple[VisitReport, int]:
        """Provide the slice's keys of one minimal region; returns the report and the keys' attempt count."""
        keys = await self.store.due_keys(mine, plan.turn, provided_before=plan.provided_before)
        await self.store.realign(mine, plan.turn, plan.provided_before, plan.turn)
        delivery = await self._send(keys, plan.peer_keys, plan.peers)
        result = delivery.outcome(len(plan.peers), self.config)
        later = None
        error = None
        if result is Outcome.PROVIDED or not keys:
            await self._provided([k.multihash for k in keys], now, plan.turn)
        else:
            error = attempt_error(result, delivery, len(plan.peers), f"of region {plan.part}")
            later = await self._failed([k.multihash for k in keys], now, result, plan.turn, error)
        report = attempt_report(plan.part, len(keys), len(plan.peers), delivery, result, later, error)
        return report, later.attempts if later else 0

    # --- sending ------------------------------------------------------------------------

    async def _send(self, keys: Sequence[KeyRow], peer_keys: Sequence[int], peers: Sequence[PeerInfo]) -> Delivery:
        """Send every key to its k closest of ``peers``."""
        delivery = Delivery()
        if not keys or not peers:
            return delivery
        allocation = allocate([k.kad for k in keys], peer_keys, self.config.replication)
        limiter = anyio.CapacityLimiter(self.config.max_peers_in_flight)
        provider = self.self_info()

        async def to_peer(index: int) -> None:
            async with limiter:
                sending, confirmed = await self._send_to_peer(peers[index], provider, keys, allocation[index])
            delivery.messages += sending.sent
            delivery.delivered += sending.some_delivered
            delivery.confirmed += confirmed

        async with anyio.create_task_group() as tg:
            for index in allocation:
                tg.start_soon(to_peer, index)
        return delivery

    async def _send_to_peer(
        self, peer: PeerInfo, provider: PeerInfo, keys: Sequence[KeyRow], runs: Sequence[tuple[int, int]]
    ) -> tuple[PeerSending, bool]:
        """ADD_PROVIDER for each allotted key (``runs`` of indexes into ``keys``), one
        after the other on the peer's stream; returns what went out and whether the peer
        confirmed all of it.

        Each send is bounded by ``send_timeout`` (at least, and at most twice it): one
        cancel scope covers a run of sends and its deadline moves on only when less than
        ``send_timeout`` is left. A timer per ADD_PROVIDER (``fail_after``) was half the
        sweep's CPU; this is one per ``send_timeout`` of sending. A send that stalls past
        the deadline counts as a failed one, and sending goes on with the next key."""
        sending = PeerSending(self.config)
        order = [i for start, stop in runs for i in range(start, stop)]
        timeout = self.config.send_timeout
        position = 0
        while position < len(order):
            with anyio.CancelScope(deadline=anyio.current_time() + 2 * timeout) as scope:
                while position < len(order):
                    if self._claim_lost:
                        return sending, False
                    now = anyio.current_time()
                    if scope.deadline - now < timeout:
                        scope.deadline = now + 2 * timeout
                    message = Message(MessageType.ADD_PROVIDER, key=keys[order[position]].multihash, provider_peers=(provider,))
                    self.counters.messages += 1
                    try:
                        await self.messenger.send(peer, message)
                        sending.delivered()
                    except (NetworkError, TimeoutError, OSError) as exc:
                        self.counters.message_failures += 1
                        if sending.failed():
                            log.debug("giving up on %s after %d failures: %s", peer.peer_id, sending.streak, exc)
                            return sending, False
                    position += 1
                    if sending.confirm_due:
                        scope.deadline = anyio.current_time() + 2 * timeout  # past the confirmation's own
                        if not await self._processed(peer):
                            return sending, False
                        sending.confirmed()
            if scope.cancelled_caught:  # the send of order[position] stalled
                self.counters.message_failures += 1
                position += 1
                if sending.failed():
                    log.debug("giving up on %s after %d failures: sends stalled", peer.peer_id, sending.streak)
                    return sending, False
        if sending.needs_final_confirm:
            return sending, await self._processed(peer)
        return sending, sending.some_delivered

    async def _processed(self, peer: PeerInfo) -> bool:
        """A sent ADD_PROVIDER may still sit in a buffer (or a rate limiter) when we move
        on. A FIND_NODE for the server's own id on the same stream, answered in order by
        go, js, rust-libp2p and us, proves the server has processed every ADD_PROVIDER
        before it (a PING would not do: rust-libp2p's kad handler closes the stream on
        one; go answers a FIND_NODE for itself with itself alone). Keys are marked
        provided only once all are confirmed, so a crash never marks a key whose records
        were lost in flight."""
        try:
            with anyio.fail_after(self.config.send_timeout):
                await self.messenger.request(peer, Message(MessageType.FIND_NODE, key=peer.peer_id.to_bytes()))
        except (NetworkError, TimeoutError, OSError) as exc:
            log.debug("%s did not confirm its ADD_PROVIDERs: %s", peer.peer_id, exc)
            return False
        return True

    # --- keys one by one -----------------------------------------------------------------

    async def _individual(
        self, region: Prefix, keys: Sequence[KeyRow], now: float, answered: dict[bytes, list[PeerInfo]]
    ) -> VisitReport:
        """One lookup per key (``answered``: lookups already made, by target)."""
        turn = self.turns.next(region, now)
        report = VisitReport(prefix=region, individual=True)
        for key in keys:
            answer = answered.get(key.multihash) or await self._lookup(key.multihash)
            peer_keys, peers = answer_servers(answer)
            delivery = await self._send([key], peer_keys, peers)
            result = delivery.outcome(len(peers), self.config)
            later = None
            error = None
            if result is Outcome.PROVIDED:
                await self._provided([key.multihash], now, turn)
            else:
                error = attempt_error(result, delivery, len(peers), f"for {key.multihash.hex()[:16]}…")
                later = await self._failed([key.multihash], now, result, turn, error)
            report = combine(report, attempt_report(region, 1, len(peers), delivery, result, later, error))
        return report

    # --- outcomes -------------------------------------------------------------------------

    async def _provided(self, multihashes: Sequence[bytes], now: float, turn: int) -> None:
        if self._claim_lost:  # the new owner sends them; marking them here would skip its visit
            raise ClaimLost
        await self.store.mark_provided(multihashes, int(now), turn)
        self.counters.keys_provided += len(multihashes)

    async def _failed(self, multihashes: Sequence[bytes], now: float, result: Outcome, turn: int, error: str) -> Retry:
        """Back the keys off, or leave them to their next ``turn`` once this cycle's sends are used up."""
        if self._claim_lost:
            raise ClaimLost
        later = retry(result, await self.store.max_attempts(multihashes), now, turn, self.config)
        await self.store.mark_failed(multihashes, error, later.at)
        if result is Outcome.UNCONFIRMED:
            self.counters.keys_unconfirmed += len(multihashes)
        else:
            self.counters.keys_failed += len(multihashes)
        self.counters.keys_deferred += len(multihashes) if later.deferred else 0
        self.counters.by_region_failures += 1
        # Every failure is logged quietly; crossing into "failing" is reported once.
        level = logging.WARNING if later.attempts == FAILING_AFTER_ATTEMPTS else logging.INFO
        what = "left to their next turn" if later.deferred else "retrying"
        n, wait = len(multihashes), later.at - int(now)
        log.log(level, "provide %s for %d keys (attempt %d, %s in %ds): %s", result.value, n, later.attempts, what, wait, error)
        return later

    async def _fail_prefix(self, prefix: Prefix, now: float, error: str) -> VisitReport:
        turn = self.turns.next(prefix, now)
        keys = await self.store.due_keys(prefix, turn)
        if keys:
            await self._failed([k.multihash for k in keys], now, Outcome.UNSENT, turn, error)
        return VisitReport(prefix=prefix, keys=len(keys), failed=len(keys), error=error)
