"""The simulated network: N nodes running the real routing table, router and request
handler, wired by a virtual transport with latency, loss, unresponsive nodes and churn."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from .. import amino
from ..errors import NetworkError
from ..kadkey import BITS, Key
from ..peerid import PeerId
from ..providerstore.memory import MemoryProviderStore
from ..records.api import Validator
from ..records.memory import MemoryValueStore
from ..routing.api import LookupStats
from ..routing.router import KademliaRouter
from ..routingtable.kbuckets import KBucketTable
from ..server.api import InvalidRequest, RequestHandler
from ..server.handler import KademliaHandler
from ..types import Message, MessageType, PeerInfo
from .clock import run_virtual
from .validator import SequenceValidator

T = TypeVar("T")

# Virtual t = 0 on the wall clock the stores see (2026-01-01T00:00:00Z): records get
# plausible timestamps, and a run does not depend on when it runs.
EPOCH = 1_767_225_600.0

_ED25519_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])  # identity mh of an Ed25519 key


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 500
    seed: int = 0
    latency: tuple[float, float] = (0.010, 0.100)  # one-way delay, uniform, seconds
    loss: float = 0.0  # chance that a request, or its reply, is lost
    unresponsive: float = 0.0  # fraction of nodes that accept requests but never answer
    request_timeout: float = amino.READ_MESSAGE_TIMEOUT
    bucket_size: int = amino.BUCKET_SIZE
    alpha: int = amino.CONCURRENCY
    beta: int = amino.RESILIENCY


class SimNode:
    """One simulated node: the real table, router and handler, and its fault flags."""

    def __init__(self, network: SimNetwork, index: int, peer_id: PeerId, addr: bytes):
        self.network = network
        self.index = index
        self.peer_id = peer_id
        self.info = PeerInfo(peer_id, (addr,))
        self.key = Key.for_peer(peer_id)
        self.online = True
        self.responsive = True
        cfg = network.config
        self.table = KBucketTable(self.key, bucket_size=cfg.bucket_size)
        self.validator = SequenceValidator()
        self.providers = MemoryProviderStore(network.wall_clock, random.Random(network.config.seed * 1_000_033 + index))
        self.values = MemoryValueStore(self.validator, clock=network.wall_clock)
        self.messenger = SimMessenger(network, self)
        self.lookups: list[LookupStats] = []
        self.handler: RequestHandler = KademliaHandler(
            self.info,
            self.table,
            self.providers,
            self.values,
            self.validator,
            rng=random.Random(network.config.seed * 1_000_003 + index),
        )
        self.router = KademliaRouter(
            self.info,
            self.table,
            self.messenger,
            self.validator,
            k=cfg.bucket_size,
            alpha=cfg.alpha,
            beta=cfg.beta,
            request_timeout=cfg.request_timeout,
            clock=network.now,
            on_lookup=self.lookups.append,
        )

    def __repr__(self) -> str:
        return f"SimNode({self.index}, {self.peer_id})"

    def generic_client(self) -> GenericClient:
        """This node as a bare ``dht.RecordClient``: the free functions then run their
        generic algorithms rather than the router's own methods."""
        return GenericClient(self)


class GenericClient:
    """A ``dht.RecordClient`` and nothing more: closest peers, requests, a validator."""

    def __init__(self, node: SimNode):
        self._node = node
        self.validator: Validator = node.validator

    async def find_closest_peers(self, key: bytes, n: int) -> list[PeerInfo]:
        return await self._node.router.find_closest_peers(key, n)

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        return await self._node.messenger.request(peer, message)

    async def send(self, peer: PeerInfo, message: Message) -> None:
        await self._node.messenger.send(peer, message)


class SimMessenger:
    """``network.api.KadMessenger`` over the virtual transport. A dead or unknown peer
    fails after one trip; a lost or unanswered request fails at the request timeout."""

    def __init__(self, network: SimNetwork, owner: SimNode):
        self._net = network
        self._owner = owner

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        reply = await self._deliver(peer, message)
        if reply is None:
            raise NetworkError(f"{peer.peer_id} sent no reply to {message.type.name}")
        await anyio.sleep(self._net.latency())
        if self._net.lost():
            await self._time_out()
        # A server that answered passes identify and the lookup check: it may join our table.
        self._owner.table.add(peer, self._net.now())
        return reply

    async def send(self, peer: PeerInfo, message: Message) -> None:
        await self._deliver(peer, message)

    async def _deliver(self, peer: PeerInfo, message: Message) -> Message | None:
        net = self._net
        net.messages[message.type] += 1
        await anyio.sleep(net.latency())
        target = net.by_id.get(peer.peer_id)
        if target is None or not target.online or not self._owner.online:
            raise NetworkError(f"cannot connect to {peer.peer_id}")
        if not target.responsive or net.lost():
            await self._time_out()
        try:
            reply = await target.handler.handle(self._owner.info, message)
        except InvalidRequest as exc:
            raise NetworkError(f"{peer.peer_id} reset the stream: {exc}") from None
        # The target learns of a server that talked to it (identify), and admits it if it
        # passes go's lookupCheck (a FIND_NODE it must answer): unresponsive nodes do not.
        if self._owner.responsive:
            target.table.add(self._owner.info, net.now())
        return reply

    async def _time_out(self) -> None:
        await anyio.sleep(self._net.config.request_timeout)
        raise NetworkError("request timed out")


class SimNetwork:
    """N nodes with full, realistic routing tables (each bucket filled with random peers
    from its keyspace region, as a long-running refreshed network has them)."""

    def __init__(self, config: SimConfig = SimConfig()):
        self.config = config
        self._time = 0.0
        self.rng = random.Random(config.seed)
        self.messages: Counter[MessageType] = Counter()
        self.nodes: list[SimNode] = []
        self.by_id: dict[PeerId, SimNode] = {}
        for _ in range(config.nodes):
            self._new_node()
        self._sorted_keys: list[int] = sorted(n.key.value for n in self.nodes)
        self._by_key: dict[int, SimNode] = {n.key.value: n for n in self.nodes}
        for node in self.nodes:
            self._fill_table(node)
        for node in self.rng.sample(self.nodes, round(config.unresponsive * config.nodes)):
            node.responsive = False

    # -- running ---------------------------------------------------------------

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on virtual time, the clock going on from where the last run
        of this network stopped (records stored in one run age in the next)."""

        async def timed() -> T:
            try:
                return await fn(*args)
            finally:
                self._time = anyio.current_time()

        return run_virtual(timed, start=self._time)

    def now(self) -> float:
        """Virtual seconds since the network was built."""
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return self._time

    def wall_clock(self) -> float:
        return EPOCH + self.now()

    def latency(self) -> float:
        low, high = self.config.latency
        return self.rng.uniform(low, high)

    def lost(self) -> bool:
        return self.config.loss > 0 and self.rng.random() < self.config.loss

    def message_count(self) -> int:
        return sum(self.messages.values())

    # -- inspection ------------------------------------------------------------

    def node(self, index: int) -> SimNode:
        return self.nodes[index]

    def live_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.online and n.responsive]

    def true_closest(
        self, key: Key, n: int = amino.BUCKET_SIZE, *, exclude: PeerId | None = None, live_only: bool = True
    ) -> list[PeerId]:
        """Brute force: the ``n`` nodes closest to ``key`` other than ``exclude`` (the
        node that looks: a lookup never returns itself), live ones only by default."""
        pool = [n for n in (self.live_nodes() if live_only else self.nodes) if n.peer_id != exclude]
        t = key.value
        return [node.peer_id for node in sorted(pool, key=lambda node: node.key.value ^ t)[:n]]

    # -- faults ----------------------------------------------------------------

    def set_online(self, node: SimNode, online: bool) -> None:
        node.online = online

    def churn(self, fraction: float) -> tuple[list[SimNode], list[SimNode]]:
        """Take ``fraction`` of the online nodes offline and bring as many offline ones
        back (all of them when there are fewer). Returns (went down, came back)."""
        online = [n for n in self.nodes if n.online]
        offline = [n for n in self.nodes if not n.online]
        down = self.rng.sample(online, round(fraction * len(online)))
        up = self.rng.sample(offline, min(len(down), len(offline)))
        for node in down:
            node.online = False
        for node in up:
            node.online = True
        return down, up

    def refresh(self) -> None:
        """Every node's table as after a routing-table refresh: peers that are offline or
        unresponsive are evicted and the buckets refilled with live peers."""
        for node in self.nodes:
            for peer in node.table.peers():
                other = self.by_id[peer.peer_id]
                if not (other.online and other.responsive):
                    node.table.remove(peer.peer_id)
            self._fill_table(node, live_only=True)

    def add_node(self) -> SimNode:
        """A newcomer, knowing the peers an oracle gives it; the others learn of it when it
        talks to them (run ``await node.router.find_closest_peers(node.peer_id.to_bytes())``)."""
        node = self._new_node()
        bisect.insort(self._sorted_keys, node.key.value)
        self._by_key[node.key.value] = node
        self._fill_table(node)
        return node

    # -- construction ----------------------------------------------------------

    def _new_node(self) -> SimNode:
        index = len(self.nodes)
        peer_id = PeerId(_ED25519_ID_PREFIX + self.rng.randbytes(32))
        # /ip4/10.a.b.c/tcp/4001, distinct per node
        addr = bytes([0x04, 10, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF, 0x06, 0x0F, 0xA1])
        node = SimNode(self, index, peer_id, addr)
        self.nodes.append(node)
        self.by_id[peer_id] = node
        return node

    def _fill_table(self, node: SimNode, live_only: bool = False) -> None:
        """Fill each bucket with up to k random peers from its region of the keyspace
        (live ones only, when refreshing)."""
        k = self.config.bucket_size
        v = node.key.value
        keys = self._sorted_keys
        for cpl in range(BITS):
            shift = BITS - cpl
            shared = v >> shift << shift if cpl else 0
            lo, hi = bisect.bisect_left(keys, shared), bisect.bisect_left(keys, shared + (1 << shift))
            if hi - lo <= 1:
                break  # nobody else shares these cpl bits with us, nor any longer prefix
            region = (v >> (shift - 1) ^ 1) << (shift - 1)  # first cpl bits ours, next one flipped
            rlo, rhi = bisect.bisect_left(keys, region), bisect.bisect_left(keys, region + (1 << (shift - 1)))
            # a full bucket refuses more, so with live_only a few extra draws make up for dead picks
            draws = min(rhi - rlo, 4 * k if live_only else k)
            for i in self.rng.sample(range(rlo, rhi), draws):
                peer = self._by_key[keys[i]]
                if not live_only or (peer.online and peer.responsive):
                    node.table.add(peer.info, self.now())
