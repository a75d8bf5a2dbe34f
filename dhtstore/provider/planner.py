"""The sweep's decisions, without I/O: which slice a visit takes, where its lookups go,
which server gets which key, and what a visit's outcome writes back.

``sweep.Sweep`` (the driver) reads the store, makes the lookups and sends the messages,
and feeds what it learns to these functions; nothing here awaits, touches the network
or the store, so every rule is tested on plain values (``tests/test_sweep_planner.py``).
The vocabulary (prefix, region, slice) is defined in ``provider.sweep``.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ..kadkey import BITS, Key, preimage_with_prefix
from ..types import PeerInfo
from .api import RegionRow, SweepConfig, VisitReport
from .keyspace import (
    Prefix,
    common_prefix_length,
    covered_prefix,
    gaps,
    intersection,
    minimal_regions,
)
from .schedule import next_turn, retry_delay

# Mining a lookup target for a longer prefix than this costs too much CPU (2^20 hashes
# on average); such a gap is left to the region's own keys.
MAX_MINED_PREFIX_BITS = 20
# When even the first lookup fails, the keys under this many bits of the key back off together.
UNEXPLORED_FAILURE_BITS = 8
# A visit that loses the race for its slice to another process looks for other work this many times.
CLAIM_ATTEMPTS = 3


class ExploreError(Exception):
    """A region could not be explored (the lookups failed or found nobody)."""


def preimage_under(prefix: Prefix) -> bytes:
    """A sha2-256 multihash whose Kademlia key lies under ``prefix``: the same one for
    the same prefix, so a simulated run is reproducible."""
    if prefix.length > MAX_MINED_PREFIX_BITS:
        raise ValueError(f"prefix of {prefix.length} bits is too long to search a preimage for")
    return preimage_with_prefix(prefix.bits, prefix.length, random.Random(f"dhtstore-explore/{prefix}").randbytes)


@dataclass(frozen=True, slots=True)
class Turns:
    """When each prefix's turn comes (``schedule.next_turn``) for one node's schedule."""

    order: int
    cycle_start: int
    config: SweepConfig

    def next(self, prefix: Prefix, now: float) -> int:
        """The prefix's next turn; one less than a grace away is taken now, so its keys
        go out now and are due again a whole interval later."""
        c = self.config
        return math.ceil(next_turn(prefix, self.order, c.interval, self.cycle_start, now + c.grace))


# --- which prefix a visit takes ---------------------------------------------------------------


def sort_regions(regions: Iterable[RegionRow]) -> list[RegionRow]:
    return sorted(regions, key=lambda g: g.prefix.first)


def region_of(regions: Sequence[RegionRow], kad: int) -> RegionRow | None:
    """The region (of ``regions``, sorted by first key) holding ``kad``."""
    for g in regions:  # a few hundred; a visit is rare next to its network work
        if g.prefix.contains(kad):
            return g
        if g.prefix.first > kad:
            return None
    return None


def free_prefix(regions: Sequence[RegionRow], kad: int, length: int) -> Prefix:
    """The prefix of ``kad`` of ``length`` bits, lengthened until it holds no region."""
    p = Prefix.of(kad, length)
    for g in regions:
        if p.covers(g.prefix):
            length = max(length, common_prefix_length(g.prefix.first, kad) + 1)
    return Prefix.of(kad, length)


def unexplored_failure_prefix(kad: int) -> Prefix:
    """The keys that back off together when a lookup toward ``kad`` finds nobody and no
    region size is known yet: a part of the keyspace, not the whole list."""
    return Prefix.of(kad, UNEXPLORED_FAILURE_BITS)


def narrower(piece: Prefix, kad: int, claimed_by_others: Sequence[Prefix]) -> Prefix | None:
    """The next finer prefix of ``kad`` than ``piece`` if ``piece`` holds a slice another
    process claimed (``kad`` itself is under none), else None: the visit may take ``piece``
    if it is not too big."""
    if piece.length < BITS and any(piece.covers(o) for o in claimed_by_others):
        return Prefix.of(kad, piece.length + 1)
    return None


def too_big(piece: Prefix, due: int, config: SweepConfig) -> bool:
    """A slice holding more due keys than ``claim_batch`` is split so processes share it."""
    return piece.length < BITS and due > config.claim_batch


def covered_prefix_len(kad: int, answer_keys: Sequence[int]) -> int:
    """The number of leading bits all of ``answer_keys`` share with ``kad`` (0 for fewer
    than two): a prefix of that length holds at least that many servers (go's ``approxPrefixLen``)."""
    if len(answer_keys) < 2:
        return 0
    return min(common_prefix_length(kad, k) for k in answer_keys)


def mean_prefix_len(regions: Sequence[RegionRow]) -> int | None:
    """The length to start an unexplored region at: the mean of the known ones."""
    if not regions:
        return None
    return round(sum(g.prefix.length for g in regions) / len(regions))


# --- exploring a region -----------------------------------------------------------------------


@dataclass(slots=True)
class Exploration:
    """The servers of a region, learnt lookup by lookup.

    ``next_gap`` names the uncovered prefix to look up next (widening the region while
    it holds fewer than ``replication`` servers), or None when exploring is over: nothing
    left uncovered, ``max_exploration_lookups`` made, or ``max_stale_lookups`` in a row
    that found no new server. ``record`` takes a lookup's answer; ``finish`` gives the
    explored region.
    """

    start: Prefix
    config: SweepConfig
    region: Prefix = field(init=False)
    peers: dict[int, PeerInfo] = field(default_factory=dict)  # by Kademlia key
    covered: list[Prefix] = field(default_factory=list)
    lookups: int = 0
    stale: int = 0

    def __post_init__(self) -> None:
        self.region = self.start

    def count_under(self, prefix: Prefix) -> int:
        return sum(1 for k in self.peers if prefix.contains(k))

    def next_gap(self) -> Prefix | None:
        c = self.config
        if self.lookups >= c.max_exploration_lookups or self.stale >= c.max_stale_lookups:
            return None
        while True:
            todo = gaps(self.region, self.covered)
            if todo:
                return todo[0]
            if self.region.length == 0 or self.count_under(self.region) >= c.replication:
                return None
            self.region = self.region.parent()

    def skip(self, gap: Prefix) -> None:
        """Give up on ``gap``: too fine to mine a target for, and none of our keys is under it."""
        self.covered.append(gap)

    def record(self, target_kad: int, answer: Sequence[PeerInfo], *, counted: bool = True) -> None:
        """A lookup toward ``target_kad`` answered ``answer``; ``counted``: it was made for
        this exploration (not the lookup that estimated the region size)."""
        if counted:
            self.lookups += 1
        fresh = 0
        for p in answer:
            key = Key.for_peer(p.peer_id).value
            if key not in self.peers:
                self.peers[key] = p
                fresh += 1
        covered = covered_prefix(target_kad, [Key.for_peer(p.peer_id).value for p in answer])
        if covered is None:
            raise ExploreError(f"lookups in region {self.start} found no peers")
        self.covered.append(covered)
        self.stale = 0 if fresh else self.stale + 1

    def finish(self) -> Exploration:
        """Widen the region until it holds ``replication`` servers; raises ExploreError if it holds none."""
        while self.region.length > 0 and self.count_under(self.region) < self.config.replication:
            self.region = self.region.parent()
        if not self.peers:
            raise ExploreError(f"region {self.start} has no reachable peers")
        return self


def reusable(explored: tuple[float, Exploration] | None, start: Prefix, now: float, config: SweepConfig) -> Exploration | None:
    """An exploration made less than a grace ago that covers ``start``: its servers serve
    the region's other slices."""
    if explored is None:
        return None
    at, ex = explored
    return ex if ex.region.covers(start) and now - at < config.grace else None


# --- allocating keys to servers ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartPlan:
    """One minimal region of an explored region: its turn, the claimed slice's share of
    it (None: outside the slice, only its row is written), its servers, and the last
    provide time a due key may have and still be sent (``provided_before``)."""

    part: Prefix
    turn: int
    mine: Prefix | None
    provided_before: int
    peer_keys: list[int]
    peers: list[PeerInfo]


def plan_parts(ex: Exploration, piece: Prefix, turns: Turns, now: float) -> list[PartPlan]:
    """Split the explored region into minimal regions (``keyspace.minimal_regions``) and
    plan the visit of each.

    A key whose last provide is recent enough that the part's turn falls within an
    interval plus ``max_delay`` of it (one an earlier visit sent while the regions were
    being refined) is only moved to the turn, so no key goes out twice in a cycle.
    """
    c = turns.config
    inside = sorted(k for k in ex.peers if ex.region.contains(k))
    plans = []
    for part in minimal_regions(ex.region, inside, c.replication):
        turn = turns.next(part, now)
        peer_keys = [k for k in inside if part.contains(k)]
        plans.append(
            PartPlan(
                part=part,
                turn=turn,
                mine=intersection(part, piece),
                provided_before=math.floor(turn - c.interval - c.max_delay),
                peer_keys=peer_keys,
                peers=[ex.peers[k] for k in peer_keys],
            )
        )
    return plans


def answer_servers(answer: Sequence[PeerInfo]) -> tuple[list[int], list[PeerInfo]]:
    """A lookup's answer as the sweep sends to servers: their Kademlia keys, sorted, and the peers in that order."""
    by_key = {Key.for_peer(p.peer_id).value: p for p in answer}
    keys = sorted(by_key)
    return keys, [by_key[k] for k in keys]


@dataclass(slots=True)
class PeerSending:
    """The ADD_PROVIDERs to one server, one after the other on its stream.

    ADD_PROVIDER gets no reply, so a request on the same stream (answered in order) after
    every ``confirm_every`` of them and after the last proves the server processed them.
    The server is given up after more than ``max_failure_streak`` failures in a row (go's
    ``maxConsecutiveProvideFailuresAllowed``). It counts as reached when at least one
    record went through and all went through were confirmed.
    """

    config: SweepConfig
    sent: int = 0
    errors: int = 0
    streak: int = 0
    unconfirmed: int = 0

    def delivered(self) -> None:
        self.sent += 1
        self.streak = 0
        self.unconfirmed += 1

    def failed(self) -> bool:
        """One send failed; True if the server is to be given up."""
        self.sent += 1
        self.errors += 1
        self.streak += 1
        return self.streak > self.config.max_failure_streak

    @property
    def confirm_due(self) -> bool:
        """The server must confirm the records sent so far before more go out."""
        return self.unconfirmed >= self.config.confirm_every

    def confirmed(self) -> None:
        self.unconfirmed = 0

    @property
    def some_delivered(self) -> bool:
        return self.errors < self.sent

    @property
    def needs_final_confirm(self) -> bool:
        return self.some_delivered and self.unconfirmed > 0


# --- outcomes --------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What one attempt at some keys came to."""

    PROVIDED = "provided"  # enough servers confirmed their records
    UNCONFIRMED = "unconfirmed"  # records went out to servers, too few confirmed them
    UNSENT = "unsent"  # no server took a record (offline, unreachable, the lookups failed)


def reached_enough(reached: int, peers: int, config: SweepConfig) -> bool:
    """Provided: at least ``min_reachable_ratio`` of the servers took their records (go's
    ``minimalRegionReachablePeersRatio``)."""
    return peers > 0 and reached >= config.min_reachable_ratio * peers


def outcome(confirmed: int, delivered: int, peers: int, config: SweepConfig) -> Outcome:
    """``confirmed``: servers that confirmed their records; ``delivered``: servers that
    took at least one (confirmed or not)."""
    if reached_enough(confirmed, peers, config):
        return Outcome.PROVIDED
    return Outcome.UNCONFIRMED if delivered else Outcome.UNSENT


@dataclass(frozen=True, slots=True)
class Retry:
    """When keys that were not provided go out again."""

    attempts: int  # their failed attempts in a row, this one included
    at: int
    deferred: bool  # this cycle's sends are used up: ``at`` is their next turn


def backoff(prior_attempts: int, now: float, config: SweepConfig) -> tuple[int, int]:
    """``(attempts, retry_at)`` for keys that failed once more after ``prior_attempts``:
    a doubling delay from ``retry_after`` up to ``max_retry_after``."""
    attempts = prior_attempts + 1
    return attempts, math.ceil(now + retry_delay(attempts, config.retry_after, config.max_retry_after))


def retry(result: Outcome, prior_attempts: int, now: float, turn: int, config: SweepConfig) -> Retry:
    """The retry of keys whose attempt came to ``result`` (not PROVIDED); ``turn``: their next turn.

    Keys that reached no server back off and retry. Keys sent but unconfirmed retry too,
    until this attempt is their ``max_sends_per_cycle``-th in a row: then they wait for
    their next turn, and from then on go out once per turn until a send is confirmed.
    Counting every failure of the streak (unsent ones too) keeps it one number per key:
    the sends of a cycle can only be fewer, never more.
    """
    attempts, at = backoff(prior_attempts, now, config)
    if result is Outcome.UNCONFIRMED and attempts >= config.max_sends_per_cycle:
        return Retry(attempts, turn, deferred=True)
    return Retry(attempts, at, deferred=False)


@dataclass(slots=True)
class Delivery:
    """What sending some keys to their servers came to."""

    confirmed: int = 0  # servers that took their records and confirmed them
    delivered: int = 0  # servers that took at least one record, confirmed or not
    messages: int = 0  # ADD_PROVIDERs sent

    def outcome(self, peers: int, config: SweepConfig) -> Outcome:
        return outcome(self.confirmed, self.delivered, peers, config)


def attempt_report(
    prefix: Prefix, keys: int, peers: int, delivery: Delivery, result: Outcome, later: Retry | None, error: str | None
) -> VisitReport:
    """The report of one attempt at ``keys`` keys (``later``: their retry, if not provided)."""
    return VisitReport(
        prefix=prefix,
        keys=keys,
        provided=keys if result is Outcome.PROVIDED else 0,
        unconfirmed=keys if result is Outcome.UNCONFIRMED else 0,
        deferred=keys if later is not None and later.deferred else 0,
        failed=keys if result is Outcome.UNSENT else 0,
        peers=peers,
        peers_reached=delivery.confirmed,
        peers_unconfirmed=delivery.delivered - delivery.confirmed,
        messages=delivery.messages,
        error=error,
    )


def attempt_error(result: Outcome, delivery: Delivery, peers: int, what: str) -> str:
    if result is Outcome.UNCONFIRMED:
        return f"sent to {delivery.delivered} of {peers} peers {what}, {delivery.confirmed} confirmed"
    return f"reached {delivery.confirmed} of {peers} peers {what}"


def part_row(plan: PartPlan, now: float, attempts: int, error: str | None) -> RegionRow:
    """The schedule row of a part: visited now, or (outside the slice) only placed."""
    if plan.mine is None:
        return RegionRow(plan.part, plan.turn, None, 0, None)
    return RegionRow(plan.part, plan.turn, int(now), attempts, error)


def replace_regions(regions: Sequence[RegionRow], covering: Prefix, rows: Sequence[RegionRow]) -> list[RegionRow]:
    """``regions`` with ``rows`` in place of those under ``covering``, sorted."""
    return sort_regions([g for g in regions if not covering.covers(g.prefix)] + list(rows))


def combine(total: VisitReport, part: VisitReport) -> VisitReport:
    """Two reports of one visit added up; the later error is kept."""
    return replace(
        total,
        keys=total.keys + part.keys,
        provided=total.provided + part.provided,
        unconfirmed=total.unconfirmed + part.unconfirmed,
        deferred=total.deferred + part.deferred,
        failed=total.failed + part.failed,
        peers=total.peers + part.peers,
        peers_reached=total.peers_reached + part.peers_reached,
        peers_unconfirmed=total.peers_unconfirmed + part.peers_unconfirmed,
        lookups=total.lookups + part.lookups,
        messages=total.messages + part.messages,
        error=part.error or total.error,
    )
