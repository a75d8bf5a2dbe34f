"""Routing-table upkeep: who enters the table, who leaves, and keeping it full.

The rules are go-libp2p-kad-dht's (``rtrefresh``, ``dht.go``) and the libp2p kad-dht spec's:
- A peer enters when identify says it serves our kad protocol and it has a usable
  address (public ones only, unless private addresses are allowed, as on a LAN or in
  tests). On the public DHT a claimed address is usable only on the IP we are
  connected to it at (``multiaddrs.same_ip``): the table hands its addresses to
  others, and a claim of someone else's IP would make us a scanner's reflector. The
  IP-diversity limit counts that real remote address too (``RoutingTable.add``'s
  ``seen_from``). Once the table holds k peers, a newcomer must first answer a FIND_NODE for
  its own id with at least one peer (go's lookupCheck, from the 2023 unresponsive-
  nodes incident). A peer that stops advertising the protocol leaves.
- Refresh every 10 minutes: ping peers not heard from in the last 5 minutes and drop
  those that do not answer; a random-key lookup for each bucket up to the last
  non-empty one; then a lookup of our own id.
- Bootstrap from the configured peers at start, and again whenever the table holds
  fewer than 10 peers (checked every 2 minutes, as go's periodic bootstrap).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence

import anyio
import anyio.abc

from .. import amino
from ..dht import DHT
from ..errors import NetworkError
from ..kadkey import Key, preimage_with_prefix
from ..network import dnsaddr, multiaddrs
from ..network.api import DIAL_TIMEOUT, IdentifyInfo, KadMessenger
from ..peerid import PeerId
from ..routing.api import RoutingError
from ..routingtable.api import RoutingTable
from ..types import Message, MessageType, PeerInfo

log = logging.getLogger(__name__)

PING_AFTER = 5 * 60.0  # seconds without hearing from a peer before refresh pings it
BOOTSTRAP_CHECK_INTERVAL = 120.0
MIN_TABLE_SIZE = 10  # below this the node bootstraps again
MAX_REFRESH_CPL = 15  # a random key with a longer shared prefix costs 2^16+ hashes to find
ADMISSION_CONCURRENCY = 256  # go's LookupCheckConcurrency
ADMISSION_WAIT = 5.0  # seconds a bootstrap waits for identify to admit a dialled peer

Pinger = Callable[[PeerInfo], Awaitable[float]]
Connector = Callable[[str], Awaitable[PeerId]]  # dials a multiaddr, returns who answered
RemoteAddr = Callable[[PeerId], bytes | None]  # the binary multiaddr we are connected to a peer at


def _not_connected(_peer: PeerId) -> bytes | None:
    return None




def random_preimage_with_cpl(local: Key, cpl: int, rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """A peer-id-shaped key (sha2-256 multihash) whose Kad key shares exactly ``cpl`` bits with ``local``."""
    if not 0 <= cpl <= MAX_REFRESH_CPL:
        raise ValueError(f"cpl {cpl} outside 0..{MAX_REFRESH_CPL}")
    # Exactly cpl shared bits: local's first cpl bits, then the other value of bit cpl.
    return preimage_with_prefix((local.prefix(cpl) << 1) | (1 - local.bit(cpl)), cpl + 1, rng)


class TableUpkeep:
    def __init__(
        self,
        table: RoutingTable,
        lookups: DHT,
        messenger: KadMessenger,
        local: PeerId,
        *,
        protocols: Collection[str],
        ping: Pinger,
        connect: Connector,
        allow_private_addrs: bool = False,
        remote_addr: RemoteAddr = _not_connected,
        lookup_check: bool = True,
        refresh_interval: float = amino.REFRESH_INTERVAL.total_seconds(),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.table = table
        self._lookups = lookups
        self._messenger = messenger
        self._local = local
        self.protocols = frozenset(protocols)
        self._ping = ping
        self._connect = connect
        self.allow_private_addrs = allow_private_addrs
        self._remote_addr = remote_addr
        self.lookup_check = lookup_check
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._admitting: set[PeerId] = set()
        self._limit = anyio.CapacityLimiter(ADMISSION_CONCURRENCY)
        self._tg: anyio.abc.TaskGroup | None = None
        self.bootstrap_peers: list[str] = []
        self.bootstrapped = anyio.Event()  # set when the first bootstrap has ended
        self.counters: Counter[str] = Counter()

    # -- admission ---------------------------------------------------------------

    def usable_addrs(self, addrs: Sequence[bytes]) -> tuple[bytes, ...]:
        return multiaddrs.any_addr(addrs) if self.allow_private_addrs else multiaddrs.public_only(addrs)

    def on_identify(self, peer: PeerId, info: IdentifyInfo) -> None:
        """Host callback: decide, in the background, whether ``peer`` belongs in the table."""
        if not self.protocols.intersection(info.protocols):
            if self.table.remove(peer):
                self.counters["removed_not_server"] += 1
            return
        seen_from = self._remote_addr(peer)
        addrs = self.usable_addrs(info.listen_addrs)
        if not self.allow_private_addrs:
            addrs = multiaddrs.same_ip(addrs, seen_from)
        if not addrs:
            self.counters["refused_no_usable_addr"] += 1
            return
        candidate = PeerInfo(peer, addrs)
        if peer in self.table:
            self.table.add(candidate, self._clock(), seen_from=seen_from)  # refreshes its addresses
            self.table.mark_useful(peer, self._clock())
            return
        if self._tg is not None and peer not in self._admitting:
            self._admitting.add(peer)
            self._tg.start_soon(self._admit, candidate, seen_from)

    async def _admit(self, candidate: PeerInfo, seen_from: bytes | None = None) -> None:
        try:
            async with self._limit:
                if self.lookup_check and len(self.table) >= amino.BUCKET_SIZE and not await self._answers_lookup(candidate):
                    self.counters["refused_lookup_check"] += 1
                    return
                if self.table.add(candidate, self._clock(), seen_from=seen_from):
                    self.counters["admitted"] += 1
                else:
                    self.counters["refused_bucket_full"] += 1
        finally:
            self._admitting.discard(candidate.peer_id)

    async def _answers_lookup(self, candidate: PeerInfo) -> bool:
        request = Message(MessageType.FIND_NODE, key=candidate.peer_id.to_bytes())
        try:
            with anyio.fail_after(amino.REFRESH_QUERY_TIMEOUT):
                reply = await self._messenger.request(candidate, request)
        except (TimeoutError, NetworkError):
            return False
        return bool(reply.closer_peers)

    # -- refresh and bootstrap -----------------------------------------------------

    async def refresh(self) -> None:
        await self._ping_stale_peers()
        local = self.table.local_key
        deepest = max((Key.for_peer(p.peer_id).common_prefix_length(local) for p in self.table.peers()), default=-1)
        for cpl in range(min(deepest, MAX_REFRESH_CPL) + 1):
            await self._lookup(random_preimage_with_cpl(local, cpl))
        await self._lookup(self._local.to_bytes())
        self.counters["refreshes"] += 1

    async def _ping_stale_peers(self) -> None:
        now = self._clock()
        stale = [p for p in self.table.peers() if now - (self.table.last_useful(p.peer_id) or 0) > PING_AFTER]

        async def check(peer: PeerInfo) -> None:
            try:
                with anyio.fail_after(amino.REFRESH_PING_TIMEOUT):
                    await self._ping(peer)
            except (TimeoutError, NetworkError, OSError):
                self.table.remove(peer.peer_id)
                self.counters["removed_ping_failed"] += 1
                return
            self.table.mark_useful(peer.peer_id, self._clock())

        async with anyio.create_task_group() as tg:
            for peer in stale:
                tg.start_soon(check, peer)

    async def _lookup(self, key: bytes) -> None:
        try:
            with anyio.move_on_after(amino.REFRESH_QUERY_TIMEOUT * 6):
                await self._lookups.find_closest_peers(key, amino.BUCKET_SIZE)
        except RoutingError as exc:
            log.debug("refresh lookup failed: %s", exc)

    async def bootstrap(self, peers: Sequence[str] | None = None) -> int:
        """Dial the bootstrap peers, then look up our own id. Returns how many were reached."""
        peers = list(self.bootstrap_peers if peers is None else peers)
        reached = 0

        async def dial(addr: str) -> None:
            nonlocal reached
            reached_peer: PeerId | None = None
            try:
                targets = await dnsaddr.resolve(addr)
            except ValueError as exc:
                log.warning("bootstrap address %s is not a multiaddr: %s", addr, exc)
                return
            for target in targets:  # the addresses of one peer (or of several, for a bare /dnsaddr)
                try:
                    with anyio.fail_after(DIAL_TIMEOUT):
                        reached_peer = await self._connect(target)
                    break
                except (TimeoutError, NetworkError, OSError, ValueError) as exc:
                    log.info("bootstrap peer %s unreachable: %s", target, exc)
            if reached_peer is None:
                return
            reached += 1
            # Identify runs on every new connection and admits the peer; give it a moment.
            with anyio.move_on_after(ADMISSION_WAIT):
                while reached_peer not in self.table:
                    await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            for addr in peers:
                tg.start_soon(dial, addr)
        if peers and not reached and not len(self.table):
            log.warning("none of %d bootstrap peers could be reached: check the network or pass --bootstrap", len(peers))
        if len(self.table):
            await self._lookup(self._local.to_bytes())
        self.counters["bootstraps"] += 1
        return reached

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Admit peers, bootstrap, and refresh until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self.bootstrap()
                self.bootstrapped.set()
                next_refresh = self._clock() + self.refresh_interval
                while True:
                    await anyio.sleep(min(BOOTSTRAP_CHECK_INTERVAL, max(0.0, next_refresh - self._clock())))
                    if len(self.table) < MIN_TABLE_SIZE and self.bootstrap_peers:
                        await self.bootstrap()
                    if self._clock() >= next_refresh:
                        await self.refresh()
                        next_refresh = self._clock() + self.refresh_interval
            finally:
                self._tg = None
