"""Running the provider inside ``dhtstore.sim``'s virtual time.

The provider runs unchanged (``provider.reprovider.Reprovider`` and its sweep) on the
in-memory provide list and claims (``provider.memory``), whose calls never wait, on
the network's ``VirtualTimeLoop``: a 22-hour cycle runs in seconds, and a run is
reproducible. The SQL stores keep the same rules (the store tests run both) and are
driven in real time by ``tests/test_reprovide_scheduler.py`` and ``tests/test_shared_provide.py``.

    claims = MemoryClaimStore()
    reprovider = Reprovider(MemoryProvideList(claims), claims, node.router, node.messenger,
                            lambda: node.info, clock=net.wall_clock)
    reports = net.run(run_schedule, reprovider, net.wall_clock() + 22 * 3600)
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio

from ..kadkey import BITS, Key
from ..network.api import KadMessenger
from ..peerid import PeerId
from ..provider.api import SweepConfig, VisitReport
from ..provider.keyspace import Prefix
from ..provider.reprovider import Reprovider
from ..types import Message, MessageType, PeerInfo
from .network import SimNetwork


async def run_schedule(reprovider: Reprovider, until: float, poll: float | None = None) -> list[VisitReport]:
    """What the APScheduler timer does, on virtual time: sleep to the next due key,
    provide what is due, repeat, for the work due by the wall clock ``until`` (work due
    later is left to the next call, so consecutive calls split a run into exact windows).
    ``poll``: also look every so often, as the node's poll does, for keys another task added."""
    clock = reprovider.clock
    sweep = await reprovider.open()
    reports: list[VisitReport] = []
    while True:
        due = await reprovider.next_unclaimed_due()
        if due is not None and due <= clock() and due <= until:
            done = await reprovider.run_due(due_by=until)
            if not done:  # another process took the due work first
                await anyio.sleep(reprovider.poll_interval)
            reports += done
            continue
        if clock() >= until:
            return reports
        wake = until if due is None else min(due, until)
        if poll is not None:
            wake = min(wake, clock() + poll)
        if await sweep.claimed_by_others(clock()):
            wake = min(wake, clock() + reprovider.poll_interval)  # as the poll: their keys may come free
        await anyio.sleep(wake - clock())


def settled_after(first_provide_end: float, config: SweepConfig) -> int:
    """The start of a cycle that holds every key's reprovide exactly once (``run_schedule``
    windows, by due time): after the first provide a key's first reprovide comes within
    an interval plus ``max_delay`` (a key moved to a refined region's later turn waits up
    to ``max_delay`` longer, as go's ``maxReprovideDelay`` allows), then every interval.
    A window of one interval from the first provide's end misses those moved keys."""
    return math.ceil(first_provide_end + config.max_delay)


class RecordingMessenger:
    """A messenger that counts the ADD_PROVIDER messages sent, by key, and notes when
    each key went out (``episodes``: a send more than an hour after the key's previous
    one starts a new episode)."""

    EPISODE_GAP = 3600.0

    def __init__(self, inner: KadMessenger, clock: Callable[[], float] | None = None):
        self.inner = inner
        self.clock = clock
        self.sent: Counter[bytes] = Counter()
        self.episodes: dict[bytes, list[float]] = {}
        self._last: dict[bytes, float] = {}

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        return await self.inner.request(peer, message)

    async def send(self, peer: PeerInfo, message: Message) -> None:
        if message.type is MessageType.ADD_PROVIDER:
            self.sent[message.key] += 1
            if self.clock is not None:
                now = self.clock()
                if now - self._last.get(message.key, float("-inf")) > self.EPISODE_GAP:
                    self.episodes.setdefault(message.key, []).append(now)
                self._last[message.key] = now
        await self.inner.send(peer, message)


class Oracle:
    """The true closest live nodes of any key, fast: all k closest of a key lie under its
    longest prefix that holds k nodes, so a bisection finds a few dozen candidates and
    only those are sorted (``SimNetwork.true_closest`` sorts the whole network)."""

    def __init__(self, net: SimNetwork, exclude: PeerId):
        live = [n for n in net.live_nodes() if n.peer_id != exclude]
        self._keys = sorted(n.key.value for n in live)
        self._by_key = {n.key.value: n for n in live}

    def closest(self, key: int, k: int = 20) -> list[Any]:
        keys = self._keys
        for length in range(BITS, -1, -1):
            p = Prefix.of(key, length)
            lo, hi = bisect.bisect_left(keys, p.first), bisect.bisect_right(keys, p.last)
            if hi - lo >= k or length == 0:
                break
        return [self._by_key[x] for x in sorted(keys[lo:hi], key=lambda x: x ^ key)[:k]]


async def holders(oracle: Oracle, mh: bytes, provider: PeerId) -> int:
    """How many of the key's 20 closest live nodes (the provider aside) hold a live
    record of ``provider`` for it."""
    count = 0
    for node in oracle.closest(Key.for_multihash(mh).value):
        records = await node.providers.get_providers(mh)
        count += any(r.provider.peer_id == provider for r in records)
    return count
