"""Running the provider, with its real SQL store, inside ``dhtstore.sim``'s virtual time.

The simulation's loop jumps its clock to the next timer whenever nothing is ready; a
store call, though, waits on a worker thread (aiosqlite, asyncpg's socket), which that
loop cannot see. ``StoreTimeLoop`` counts the store calls in flight (through
``TimedStore``) and, while there are any, blocks for real until the thread answers:
store calls then take no virtual time, and a run stays reproducible.

    store = TimedStore(ProvideListStore(engine))
    anyio.run(main, backend="asyncio", backend_options={"loop_factory": StoreTimeLoop})
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import inspect
import selectors
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from ..kadkey import BITS, Key
from ..network.api import KadMessenger
from ..peerid import PeerId
from ..provider.keyspace import Prefix
from ..provider.providelist import ProvideListStore
from ..provider.reprovider import Reprovider
from ..provider.sweep import VisitReport
from ..types import Message, MessageType, PeerInfo
from .network import SimNetwork

T = TypeVar("T")


class _StoreAwareSelector(selectors.SelectSelector):
    """Moves a virtual clock as ``sim.clock.VirtualTimeLoop`` does, but never while a
    store call is in flight: then it waits for real until the worker thread answers."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.now = start
        self.in_flight = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:  # timeout 0: callbacks are ready to run
            return ready
        if self.in_flight or timeout is None:
            return super().select(None)
        self.now += timeout
        return []


class StoreTimeLoop(asyncio.SelectorEventLoop):
    """A virtual-time loop (like ``sim.clock.VirtualTimeLoop``) on which store calls
    take zero virtual time."""

    def __init__(self, start: float = 0.0) -> None:
        self._clock = _StoreAwareSelector(start)
        super().__init__(selector=self._clock)

    def time(self) -> float:
        return self._clock.now


class TimedStore:
    """Wraps a ProvideListStore so the loop knows when one of its calls is in flight."""

    def __init__(self, store: ProvideListStore):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            selector = getattr(asyncio.get_running_loop(), "_clock", None)
            counting = isinstance(selector, _StoreAwareSelector)
            if counting:
                selector.in_flight += 1
            try:
                return await attr(*args, **kwargs)
            finally:
                if counting:
                    selector.in_flight -= 1

        return call


def run_in(net: SimNetwork, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``net.run(fn, *args)`` on a ``StoreTimeLoop``: virtual time goes on from the
    network's previous run, and store calls take none of it."""

    async def timed() -> T:
        try:
            return await fn(*args)
        finally:
            net._time = asyncio.get_running_loop().time()  # as SimNetwork.run keeps it

    return anyio.run(
        timed, backend="asyncio", backend_options={"loop_factory": functools.partial(StoreTimeLoop, net.now())}
    )


async def run_schedule(reprovider: Reprovider, until: float) -> list[VisitReport]:
    """What the APScheduler timer does, on virtual time: sleep to the next due key,
    provide what is due, repeat, until the wall clock ``until``."""
    clock = reprovider.clock
    sweep = await reprovider.open()
    reports: list[VisitReport] = []
    while True:
        due = await reprovider.next_unclaimed_due()
        if due is not None and due <= clock():
            done = await reprovider.run_due()
            if not done:  # another process took the due work first
                await anyio.sleep(reprovider.poll_interval)
            reports += done
            continue
        if clock() >= until:
            return reports
        wake = until if due is None else min(due, until)
        if await sweep.claimed_by_others(clock()):
            wake = min(wake, clock() + reprovider.poll_interval)  # as the poll: their keys may come free
        await anyio.sleep(wake - clock())


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
