"""``KademliaRouter``: the DHT operations built on the iterative lookup.

It implements the Protocols of ``dhtstore.dht`` and ``dhtstore.ipfs`` (find closest
peers, find a peer, get/set a value, find providers, provide, find peers by feature),
so the packages' free functions take this fast path. Every operation hands a
``LookupStats`` to ``on_lookup``, and every peer contacted is reported to
``reporter`` so the node can keep its routing table current.
"""

from __future__ import annotations

import dataclasses
import logging

import anyio

from .. import amino
from ..dht.fanout import ask_each, send_each
from ..dht.functions import feature_key
from ..kadkey import Key
from ..network.api import KadMessenger
from ..peerid import PeerId
from ..records.api import RecordError, Validator
from ..routingtable.api import RoutingTable
from ..types import Message, MessageType, PeerInfo, Record
from .api import LookupObserver, LookupStats, PeerReporter, RoutingError
from .query import QueryOutcome, QueryState, ReplyHandler, is_valid_peer_id, run_query

log = logging.getLogger(__name__)


class KademliaRouter:
    def __init__(
        self,
        local: PeerInfo,
        table: RoutingTable,
        messenger: KadMessenger,
        validator: Validator | None = None,
        *,
        k: int = amino.BUCKET_SIZE,
        alpha: int = amino.CONCURRENCY,
        beta: int = amino.RESILIENCY,
        request_timeout: float = amino.READ_MESSAGE_TIMEOUT,
        put_timeout: float = amino.PUT_OPERATION_TIMEOUT,
        reporter: PeerReporter | None = None,
        on_lookup: LookupObserver | None = None,
    ):
        self.local = local
        self.table = table
        self.messenger = messenger
        self.validator = validator
        self.k, self.alpha, self.beta = k, alpha, beta
        self.request_timeout = request_timeout
        self.put_timeout = put_timeout
        self.reporter = reporter
        self.on_lookup = on_lookup

    # -- dht.DHT ---------------------------------------------------------------

    async def find_closest_peers(self, key: bytes, n: int = amino.BUCKET_SIZE) -> list[PeerInfo]:
        """The ``n`` closest peers to ``Key.hash(key)`` that answered us, closest first."""
        outcome = await self._lookup("find_closest_peers", MessageType.FIND_NODE, key, Key.hash(key), width=n)
        self._observe(outcome.stats)
        return outcome.state.closest_queried(n)

    # -- dht.FindPeerDHT -------------------------------------------------------

    async def find_peer(self, peer_id: PeerId) -> PeerInfo | None:
        """The peer with its addresses, or None; stops as soon as someone names it."""
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

        outcome = await self._lookup(
            "find_peer", MessageType.FIND_NODE, peer_id.to_bytes(), Key.for_peer(peer_id), on_reply=on_reply
        )
        self._observe(outcome.stats)
        return found[0] if found else None

    # -- dht.ValueDHT ----------------------------------------------------------

    async def get_value(self, key: bytes, quorum: int = 0) -> Record | None:
        """The best valid record for ``key``; stops after ``quorum`` valid answers (0: the
        whole lookup). Entry correction: the best record is PUT back to peers that
        returned another one, and to those among the k closest that returned none."""
        validator = self._require_validator()
        started = anyio.current_time()
        answers: dict[PeerId, tuple[PeerInfo, bytes | None]] = {}
        valid: list[bytes] = []

        def on_reply(peer: PeerInfo, reply: Message) -> bool:
            value = None
            record = reply.record
            if record is not None and record.key == key:
                try:
                    validator.validate(key, record.value)
                except RecordError as exc:
                    log.debug("get_value: invalid record from %s: %s", peer.peer_id, exc)
                else:
                    value = record.value
                    valid.append(value)
            answers[peer.peer_id] = (peer, value)
            return quorum > 0 and len(valid) >= quorum

        outcome = await self._lookup("get_value", MessageType.GET_VALUE, key, Key.for_record(key), on_reply=on_reply)
        if not valid:
            self._observe(outcome.stats)
            return None
        best = valid[validator.select(key, valid)]
        top = {p.peer_id for p in outcome.state.closest_queried(self.k)}
        stale = [
            peer
            for peer, value in answers.values()
            if (value is not None and value != best) or (value is None and peer.peer_id in top)
        ]
        corrected = await self._put_to(stale, Record(key, best))
        self._observe(_with_extra_messages(outcome.stats, len(stale), started))
        log.debug("get_value: corrected %d of %d stale holders", corrected, len(stale))
        return Record(key, best)

    async def set_value(self, key: bytes, value: bytes) -> int:
        """Validate, then PUT_VALUE to the k closest peers; returns how many stored it."""
        validator = self._require_validator()
        validator.validate(key, value)
        started = anyio.current_time()
        outcome = await self._lookup("set_value", MessageType.FIND_NODE, key, Key.for_record(key))
        targets = outcome.state.closest_queried(self.k)
        stored = await self._put_to(targets, Record(key, value))
        self._observe(_with_extra_messages(outcome.stats, len(targets), started))
        return stored

    # -- ipfs.FindProvidersDHT -------------------------------------------------

    async def find_providers(self, key: bytes, count: int = amino.BUCKET_SIZE) -> list[PeerInfo]:
        """Providers of the multihash ``key``; stops once ``count`` are known. A provider
        first seen without addresses takes them when it shows up again with some."""
        providers: dict[PeerId, PeerInfo] = {}
        skipped = 0

        def on_reply(peer: PeerInfo, reply: Message) -> bool:
            nonlocal skipped
            for info in reply.provider_peers:
                pid = info.peer_id if isinstance(info, PeerInfo) else None
                if not isinstance(pid, PeerId) or not is_valid_peer_id(pid.to_bytes()):
                    skipped += 1
                    continue
                known = providers.get(pid)
                if known is None or (info.addrs and not known.addrs):
                    providers[pid] = info
            return len(providers) >= count

        outcome = await self._lookup(
            "find_providers", MessageType.GET_PROVIDERS, key, Key.for_multihash(key), on_reply=on_reply
        )
        self._observe(dataclasses.replace(outcome.stats, skipped_peers=outcome.stats.skipped_peers + skipped))
        return list(providers.values())[:count]

    async def find_feature_peers(self, feature: str | bytes, n: int = amino.BUCKET_SIZE) -> list[PeerInfo]:
        return await self.find_providers(feature_key(feature), n)

    # -- ipfs.ProvideDHT -------------------------------------------------------

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

    # -- internals -------------------------------------------------------------

    async def _lookup(
        self,
        operation: str,
        kind: MessageType,
        wire_key: bytes,
        target: Key,
        *,
        width: int | None = None,
        on_reply: ReplyHandler | None = None,
    ) -> QueryOutcome:
        k = max(width or self.k, self.k)
        state = QueryState(
            target,
            self.table.local_closest_peers(target, k),
            self.local.peer_id,
            k=k,
            alpha=self.alpha,
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
            reporter=self.reporter,
        )

    async def _put_to(self, peers: list[PeerInfo], record: Record) -> int:
        """PUT_VALUE to each peer; returns how many echoed the record (accepted it)."""
        message = Message(MessageType.PUT_VALUE, key=record.key, record=record)
        replies = await ask_each(self.messenger, peers, message, self.put_timeout)
        return sum(1 for _, reply in replies if reply.record is not None and reply.record.value == record.value)

    def _require_validator(self) -> Validator:
        if self.validator is None:
            raise RoutingError("this router has no record validator")
        return self.validator

    def _observe(self, stats: LookupStats) -> None:
        if self.on_lookup is not None:
            self.on_lookup(stats)


def _with_extra_messages(stats: LookupStats, extra: int, started: float) -> LookupStats:
    """The lookup's stats plus the PUT_VALUE/ADD_PROVIDER messages sent after it."""
    return dataclasses.replace(
        stats, messages_sent=stats.messages_sent + extra, duration=anyio.current_time() - started
    )
