"""``KademliaRouter``: the DHT operations built on the iterative lookup.

It implements ``routing.api.Router`` (every Protocol of ``dhtstore.dht`` and
``dhtstore.ipfs``), so the packages' free functions take this fast path. The rules that
turn replies into a result are the generic layer's (``dht.ValueSearch``,
``dht.ProviderSet``), so both paths answer alike. Every operation hands a
``LookupStats`` to ``on_lookup``.

Each peer a lookup contacts updates the routing table (go-libp2p-kad-dht ``query.go``
``queryPeer``): one that answered is marked useful now; one that failed is marked
failed, so the next newcomer to its bucket replaces it, while it stays usable until
then. (go removes it outright in ``peerStoppedDHT``; marking keeps a peer that missed
one request, on a lossy link, until someone better comes along.)

One hop (``one_hop_min_peers``, for a full routing table, as go's ``fullrt``): once the
table holds that many peers, a lookup asks the table's k closest all at once rather than
α at a time (``QueryState(confirm=True)``). When the table is right, their answers put
nobody new among the k closest and the lookup ends after that one round, the k closest
confirmed by the peers themselves; when it is stale there, the closer peers they name
are asked in turn, and a failed candidate lets the next closest of the table in (the
lookup starts with the table's 2k closest; only the k closest reachable are asked).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import anyio

from .. import amino
from ..dht import (
    LookupTimeout,
    NotFound,
    ProviderSet,
    ReplyHandler,
    ValueSearch,
    correct_holders,
    deadline_after,
    feature_key,
    put_record,
    send_each,
)
from ..kadkey import Key
from ..network.api import KadMessenger
from ..network.multiaddrs import AddrRule
from ..peerid import PeerId
from ..records.api import Validator
from ..routingtable.api import RoutingTable
from ..types import Message, MessageType, PeerInfo, Record
from .api import LookupObserver, LookupStats
from .query import QueryOutcome, QueryState, run_query

log = logging.getLogger(__name__)


class KademliaRouter:
    def __init__(
        self,
        local: PeerInfo,
        table: RoutingTable,
        messenger: KadMessenger,
        validator: Validator,
        *,
        k: int = amino.BUCKET_SIZE,
        alpha: int = amino.CONCURRENCY,
        beta: int = amino.RESILIENCY,
        request_timeout: float = amino.READ_MESSAGE_TIMEOUT,
        put_timeout: float = amino.PUT_OPERATION_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        on_lookup: LookupObserver | None = None,
        one_hop_min_peers: int | None = None,
        addr_rule: AddrRule | None = None,
    ):
        self.local = local
        self.table = table
        self.messenger = messenger
        self.validator = validator
        self.k, self.alpha, self.beta = k, alpha, beta
        self.request_timeout = request_timeout
        self.put_timeout = put_timeout
        self.clock = clock  # the time given to the routing table's mark_useful
        self.on_lookup = on_lookup
        self.one_hop_min_peers = one_hop_min_peers
        self.addr_rule = addr_rule  # filters every address a reply names (multiaddrs.AddrRule)

    # -- network.api.KadMessenger (dht.KadClient) --------------------------------

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        return await self.messenger.request(peer, message)

    async def send(self, peer: PeerInfo, message: Message) -> None:
        await self.messenger.send(peer, message)

    # -- dht.DHT -----------------------------------------------------------------

    async def find_closest_peers(
        self, key: bytes, n: int = amino.BUCKET_SIZE, *, timeout: float | None = None
    ) -> list[PeerInfo]:
        """The ``n`` closest peers to ``Key.hash(key)`` that answered us, closest first."""
        outcome = await self._lookup(
            "find_closest_peers", MessageType.FIND_NODE, key, Key.hash(key), width=n, deadline=deadline_after(timeout)
        )
        self._observe(outcome.stats)
        closest = outcome.state.closest_queried(n)
        if outcome.stats.timed_out:
            raise LookupTimeout(key, timeout, peers=tuple(closest))
        return closest

    # -- dht.FindPeerDHT ---------------------------------------------------------

    async def find_peer(self, peer_id: PeerId, *, timeout: float | None = None) -> PeerInfo:
        """The peer with its addresses: from the table when it is there with some, else a
        lookup that stops as soon as someone names it."""
        known = self.table.get(peer_id)
        if known is not None and known.addrs:
            return known
        found: list[PeerInfo] = []

        def on_reply(peer: PeerInfo, reply: Message) -> bool:
            if peer.peer_id == peer_id:
                found.append(peer)
            for info in reply.closer_peers[: amino.MAX_CLOSER_PEERS]:
                if isinstance(info, PeerInfo) and info.peer_id == peer_id and info.addrs:
                    found.append(info)
            return bool(found)

        key = peer_id.to_bytes()
        outcome = await self._lookup(
            "find_peer", MessageType.FIND_NODE, key, Key.for_peer(peer_id), on_reply=on_reply,
            deadline=deadline_after(timeout),
        )
        self._observe(outcome.stats)
        if found:
            return found[0]
        if outcome.stats.timed_out:
            raise LookupTimeout(key, timeout)
        raise NotFound(key, "peer")

    # -- dht.ValueDHT ------------------------------------------------------------

    async def get_value(self, key: bytes, quorum: int = 0, *, timeout: float | None = None) -> Record:
        """The best valid record for ``key``; the lookup stops after ``quorum`` valid
        answers (0: it runs to its end). ``dht.ValueSearch`` has the rules: which
        answers count, and the stale-holder update after a lookup that ran to its end."""
        started = anyio.current_time()
        deadline = deadline_after(timeout)
        search = ValueSearch(key, self.validator, quorum)
        outcome = await self._lookup(
            "get_value", MessageType.GET_VALUE, key, Key.for_record(key), on_reply=search.on_reply, deadline=deadline
        )
        if outcome.stats.timed_out:
            self._observe(outcome.stats)
            raise LookupTimeout(key, timeout, records=tuple(search.records))
        sent = 0
        if not search.quorum_reached:
            closest = outcome.state.closest_queried(self.k)
            sent, corrected = await correct_holders(self.messenger, search, closest, deadline, self.put_timeout)
            log.debug("get_value: corrected %d of %d stale holders", corrected, sent)
        self._observe(_with_extra_messages(outcome.stats, sent, started))
        return search.result()

    async def set_value(self, key: bytes, value: bytes) -> int:
        """Validate, then PUT_VALUE to the k closest peers; returns how many stored it."""
        self.validator.validate(key, value)
        started = anyio.current_time()
        outcome = await self._lookup("set_value", MessageType.FIND_NODE, key, Key.for_record(key))
        targets = outcome.state.closest_queried(self.k)
        stored = await put_record(self.messenger, targets, Record(key, value), self.put_timeout)
        self._observe(_with_extra_messages(outcome.stats, len(targets), started))
        return stored

    # -- ipfs.FindProvidersDHT ---------------------------------------------------

    async def find_providers(
        self, key: bytes, count: int = amino.BUCKET_SIZE, *, timeout: float | None = None
    ) -> list[PeerInfo]:
        """Providers of the multihash ``key``, merged by ``dht.ProviderSet``; the lookup
        stops once ``count`` are known (0: it runs to its end)."""
        found = ProviderSet(count)
        outcome = await self._lookup(
            "find_providers", MessageType.GET_PROVIDERS, key, Key.for_multihash(key), on_reply=found.on_reply,
            deadline=deadline_after(timeout),
        )
        self._observe(dataclasses.replace(outcome.stats, skipped_peers=outcome.stats.skipped_peers + found.skipped))
        if outcome.stats.timed_out:
            raise LookupTimeout(key, timeout, peers=tuple(found.providers()))
        return found.providers()

    async def find_feature_peers(self, feature: str | bytes, n: int = amino.BUCKET_SIZE) -> list[PeerInfo]:
        return await self.find_providers(feature_key(feature), n)

    # -- ipfs.ProvideDHT ---------------------------------------------------------

    async def provide(self, provider: PeerInfo, key: bytes) -> int:
        """ADD_PROVIDER(key, provider) to the k closest peers. No reply is awaited (go
        sends it fire-and-forget); returns to how many peers it was sent."""
        started = anyio.current_time()
        outcome = await self._lookup("provide", MessageType.FIND_NODE, key, Key.for_multihash(key))
        targets = outcome.state.closest_queried(self.k)
        message = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(provider,))
        sent = await send_each(self.messenger, targets, message, self.put_timeout)
        self._observe(_with_extra_messages(outcome.stats, len(targets), started))
        return sent

    # -- internals ---------------------------------------------------------------

    async def _lookup(
        self,
        operation: str,
        kind: MessageType,
        wire_key: bytes,
        target: Key,
        *,
        width: int | None = None,
        on_reply: ReplyHandler | None = None,
        deadline: float = math.inf,
    ) -> QueryOutcome:
        k = max(width or self.k, self.k)
        one_hop = self.one_hop_min_peers is not None and len(self.table) >= self.one_hop_min_peers
        state = QueryState(
            target,
            # one hop: the next closest wait as stand-ins for candidates that fail
            self.table.local_closest_peers(target, 2 * k if one_hop else k),
            self.local.peer_id,
            k=k,
            alpha=max(self.alpha, k) if one_hop else self.alpha,
            confirm=one_hop,
            beta=self.beta,
        )
        message = Message(kind, key=wire_key)
        return await run_query(
            operation,
            state,
            self.messenger,
            lambda _peer: message,
            on_reply,
            timeout=self.request_timeout,
            deadline=deadline,
            reporter=self._mark,
            addr_rule=self.addr_rule,
        )

    def _mark(self, peer: PeerInfo, responded: bool) -> None:
        if responded:
            self.table.mark_useful(peer.peer_id, self.clock())
        else:
            self.table.mark_failed(peer.peer_id)

    def _observe(self, stats: LookupStats) -> None:
        if self.on_lookup is not None:
            self.on_lookup(stats)


def _with_extra_messages(stats: LookupStats, extra: int, started: float) -> LookupStats:
    """The lookup's stats plus the PUT_VALUE/ADD_PROVIDER messages sent after it."""
    return dataclasses.replace(
        stats, messages_sent=stats.messages_sent + extra, duration=anyio.current_time() - started
    )
