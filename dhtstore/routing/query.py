"""The iterative lookup as a sans-I/O state machine, and the driver that runs it.

``QueryState`` holds the candidates of one lookup, ordered by distance to the target,
each Heard, Waiting (request in flight), Queried (answered) or Unreachable; it decides
which peers to ask next and when to stop, and knows nothing of I/O. ``run_query``
sends the requests it asks for, at most α at a time, each under a timeout.

Termination is go-libp2p-kad-dht's (query.go): the lookup phase ends when the β
closest peers not known unreachable have all answered, or when no candidate is left
to ask (starvation). The follow-up phase then asks every one of the k closest that is
still only Heard (``runLookupWithFollowup``). Unlike go, which ignores what the
follow-up returns and may answer with peers it never heard from, we merge the
follow-up's answers and go on until each of the k closest reachable peers has answered
or failed: the result is the k closest peers that answered, which keeps dead peers out
of provider and value placement at the cost of a few more requests.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256

import anyio

from .. import amino
from ..dht import ReplyHandler, is_valid_peer_id
from ..errors import NetworkError
from ..kadkey import Key
from ..network.api import KadMessenger
from ..network.multiaddrs import AddrRule
from ..peerid import PeerId
from ..types import Message, PeerInfo
from .api import LookupStats, NoPeersError

log = logging.getLogger(__name__)


class PeerState(enum.Enum):
    HEARD = "heard"
    WAITING = "waiting"
    QUERIED = "queried"
    UNREACHABLE = "unreachable"


class _Candidate:
    __slots__ = ("info", "distance", "state", "depth")

    def __init__(self, info: PeerInfo, distance: int, depth: int):
        self.info = info
        self.distance = distance
        self.state = PeerState.HEARD
        self.depth = depth


class QueryState:
    """Candidates of one lookup and the rules for what to do next."""

    def __init__(
        self,
        target: Key,
        seeds: list[PeerInfo],
        local_peer: PeerId,
        *,
        k: int = amino.BUCKET_SIZE,
        alpha: int = amino.CONCURRENCY,
        beta: int = amino.RESILIENCY,
        max_closer: int = amino.MAX_CLOSER_PEERS,
        confirm: bool = False,
    ):
        self._target = target.value
        self._local = local_peer
        self.k, self.alpha, self.beta, self.max_closer = k, alpha, beta, max_closer
        self._by_id: dict[PeerId, _Candidate] = {}
        self._ordered: list[_Candidate] = []  # closest first
        self.in_flight = 0
        # confirm: the seeds are believed to be the closest (a full routing table), so the
        # lookup starts in the follow-up phase: ask the k closest, and only peers that
        # their answers put among the k closest.
        self.following_up = confirm
        self.stopped = False
        self.skipped_peers = 0
        for info in seeds:
            self._add(info, depth=0)
        self._advance()

    @property
    def has_candidates(self) -> bool:
        return bool(self._ordered)

    @property
    def finished(self) -> bool:
        if self.stopped:
            return True
        if self.following_up:
            return not any(c.state in (PeerState.HEARD, PeerState.WAITING) for c in self._top_reachable())
        return False

    def next_peers(self) -> list[PeerInfo]:
        """Peers to ask now (marked Waiting); empty when α requests are in flight."""
        if self.finished:
            return []
        pool = self._top_reachable() if self.following_up else self._ordered
        chosen = []
        for c in pool:
            if self.in_flight >= self.alpha:
                break
            if c.state is PeerState.HEARD:
                c.state = PeerState.WAITING
                self.in_flight += 1
                chosen.append(c.info)
        return chosen

    def on_response(self, peer: PeerId, closer: tuple[PeerInfo, ...]) -> None:
        parent = self._by_id[peer]
        self._settle(parent, PeerState.QUERIED)
        if len(closer) > self.max_closer:
            self.skipped_peers += len(closer) - self.max_closer
            closer = closer[: self.max_closer]
        seen: set[PeerId] = set()
        for info in closer:
            pid = info.peer_id if isinstance(info, PeerInfo) else None
            if (
                not isinstance(pid, PeerId)
                or pid in seen
                or pid == self._local
                or not is_valid_peer_id(pid.to_bytes())
            ):
                self.skipped_peers += 1
                continue
            seen.add(pid)
            known = self._by_id.get(pid)
            if known is None:
                self._add(info, parent.depth + 1)
            elif info.addrs and not known.info.addrs:
                known.info = info
        self._advance()

    def on_failure(self, peer: PeerId) -> None:
        self._settle(self._by_id[peer], PeerState.UNREACHABLE)
        self._advance()

    def stop(self) -> None:
        """End the lookup now: an operation-specific goal was met."""
        self.stopped = True

    def closest_queried(self, n: int) -> list[PeerInfo]:
        return [c.info for c in self._ordered if c.state is PeerState.QUERIED][:n]

    def depth_of(self, peer: PeerId) -> int:
        return self._by_id[peer].depth

    def state_of(self, peer: PeerId) -> PeerState | None:
        c = self._by_id.get(peer)
        return c.state if c else None

    def _add(self, info: PeerInfo, depth: int) -> None:
        if info.peer_id == self._local or info.peer_id in self._by_id:
            return
        peer_key = int.from_bytes(sha256(info.peer_id.to_bytes()).digest(), "big")  # Key.for_peer, inlined: hot
        c = _Candidate(info, peer_key ^ self._target, depth)
        self._by_id[info.peer_id] = c
        bisect.insort(self._ordered, c, key=lambda x: x.distance)

    def _settle(self, c: _Candidate, state: PeerState) -> None:
        if c.state is PeerState.WAITING:
            self.in_flight -= 1
        c.state = state

    def _top_reachable(self) -> list[_Candidate]:
        top = []
        for c in self._ordered:
            if c.state is not PeerState.UNREACHABLE:
                top.append(c)
                if len(top) == self.k:
                    break
        return top

    def _advance(self) -> None:
        """Enter the follow-up phase once the lookup phase has terminated."""
        if not self.following_up and self._lookup_terminated():
            self.following_up = True

    def _lookup_terminated(self) -> bool:
        closest_beta = []
        for c in self._ordered:
            if c.state is not PeerState.UNREACHABLE:
                closest_beta.append(c)
                if len(closest_beta) == self.beta:
                    break
        if closest_beta and all(c.state is PeerState.QUERIED for c in closest_beta):
            return True
        return not any(c.state in (PeerState.HEARD, PeerState.WAITING) for c in self._ordered)


@dataclass(slots=True)
class QueryOutcome:
    state: QueryState
    stats: LookupStats


PeerReporter = Callable[[PeerInfo, bool], None]
"""Told about each peer the lookup contacted: (peer, whether it answered)."""


async def run_query(
    operation: str,
    state: QueryState,
    messenger: KadMessenger,
    request: Callable[[PeerInfo], Message],
    on_reply: ReplyHandler | None = None,
    *,
    timeout: float = amino.READ_MESSAGE_TIMEOUT,
    deadline: float = math.inf,
    reporter: PeerReporter | None = None,
    addr_rule: AddrRule | None = None,
) -> QueryOutcome:
    """Drive ``state`` to its end, or until ``deadline`` (anyio clock: then the stats say
    ``timed_out`` and the requests in flight are dropped unreported); raise NoPeersError
    at once when it has no seed. ``timeout`` bounds each request. ``addr_rule`` filters
    the addresses of every peer a reply names before anything sees them: a closer peer
    left with none is skipped, so the lookup never dials an address the rule refuses."""
    if not state.has_candidates:
        raise NoPeersError()
    started = anyio.current_time()
    sent = responded = failed = 0
    # A request's round: 1 for the first ones, else 1 + the round of the request whose
    # reply it waited for (the longest chain of request-after-reply: one-hop is 1).
    round_of: dict[PeerId, int] = {}
    rounds = 0
    results_in, results_out = anyio.create_memory_object_stream[tuple[PeerInfo, Message | None]](math.inf)

    async def ask(peer: PeerInfo) -> None:
        try:
            with anyio.fail_after(timeout):
                reply = await messenger.request(peer, request(peer))
        except (NetworkError, TimeoutError) as exc:
            log.debug("%s: %s did not answer: %s", operation, peer.peer_id, exc)
            reply = None
        results_in.send_nowait((peer, reply))

    with anyio.CancelScope(deadline=deadline) as limit:
        async with anyio.create_task_group() as tg:
            after_round = 0
            while True:
                for peer in state.next_peers():
                    sent += 1
                    round_of[peer.peer_id] = after_round + 1
                    rounds = max(rounds, after_round + 1)
                    tg.start_soon(ask, peer)
                if state.finished:
                    break
                peer, reply = await results_out.receive()
                after_round = round_of.get(peer.peer_id, 0)
                if reply is None:
                    failed += 1
                    state.on_failure(peer.peer_id)
                else:
                    responded += 1
                    if addr_rule is not None:
                        reply = _with_addr_rule(reply, addr_rule)
                    state.skipped_peers += reply.skipped_peers
                    state.on_response(peer.peer_id, reply.closer_peers)
                    if on_reply is not None and on_reply(peer, reply):
                        state.stop()
                if reporter is not None:
                    reporter(peer, reply is not None)
            tg.cancel_scope.cancel()
    results_in.close()
    results_out.close()

    answer = state.closest_queried(state.k)
    stats = LookupStats(
        operation=operation,
        messages_sent=sent,
        peers_contacted=sent,
        peers_responded=responded,
        peers_failed=failed,
        hops=max((state.depth_of(p.peer_id) for p in answer), default=0),
        duration=anyio.current_time() - started,
        skipped_peers=state.skipped_peers,
        completed=not (state.stopped or limit.cancelled_caught),
        timed_out=limit.cancelled_caught,
        rounds=rounds,
    )
    return QueryOutcome(state, stats)


def _with_addr_rule(reply: Message, rule: AddrRule) -> Message:
    """The reply with each named peer's addresses filtered by ``rule``; closer peers left
    without an address are dropped (counted as skipped). Providers stay, address-less:
    a lookup never dials them."""
    closer = []
    dropped = 0
    for info in reply.closer_peers:
        if isinstance(info, PeerInfo):
            addrs = rule(info.addrs)
            if not addrs:
                dropped += 1
                continue
            info = PeerInfo(info.peer_id, addrs) if addrs != info.addrs else info
        closer.append(info)
    providers = tuple(
        PeerInfo(p.peer_id, rule(p.addrs)) if isinstance(p, PeerInfo) else p for p in reply.provider_peers
    )
    return dataclasses.replace(
        reply, closer_peers=tuple(closer), provider_peers=providers, skipped_peers=reply.skipped_peers + dropped
    )
