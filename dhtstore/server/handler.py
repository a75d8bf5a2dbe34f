"""The Kademlia request handler, behaving as go-libp2p-kad-dht's ``handlers.go``.

One ``handle`` call per decoded request: the reply, None for ADD_PROVIDER (go sends
none and go clients wait for none), or InvalidRequest, on which the network layer
resets the stream; ``add_providers`` for a run of ADD_PROVIDERs that arrived together.
Every request is counted by type and outcome in ``counters``.

Every address the handler stores or hands out passes ``addr_rule`` (go-libp2p-kad-dht
dual's address filter; ``network.multiaddrs.public_only`` on the public DHT): closer
peers and a FIND_NODE target, a provider's addresses when an ADD_PROVIDER is stored and
again when GET_PROVIDERS serves them (a record stored before, or by another process of
a shared store, is filtered too).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from .. import amino, multihash
from ..errors import StoreError
from ..kadkey import Key
from ..network.multiaddrs import AddrRule, any_addr
from ..peerid import PeerId, PeerIdError
from ..providerstore.api import Announcement, ProviderStore, QuotaExceeded
from ..records.api import RecordError, Validator, ValueStore
from ..routingtable.api import RoutingTable
from ..types import Message, MessageType, PeerInfo, Record
from .api import InvalidRequest

log = logging.getLogger(__name__)

AddressBook = Callable[[PeerId], tuple[bytes, ...]]
"""Known addresses of a peer (the peerstore); empty when unknown."""

OwnProvides = Callable[[bytes], Awaitable[bool]]
"""Whether we provide a multihash ourselves (it is in our provide list)."""

# Bytes of a GET_PROVIDERS reply that are not provider entries: header, key, closer
# peers are measured exactly; this is the margin for protobuf framing.
_FRAMING_MARGIN = 1024


class _Dropped(Exception):
    """A request taken but not acted on (no reply, no reset), counted as ``outcome``."""

    def __init__(self, outcome: str):
        super().__init__(outcome)
        self.outcome = outcome


def _no_addresses(_peer: PeerId) -> tuple[bytes, ...]:
    return ()


class KademliaHandler:
    def __init__(
        self,
        local: PeerInfo,
        table: RoutingTable,
        providers: ProviderStore,
        values: ValueStore,
        validator: Validator,
        *,
        address_book: AddressBook = _no_addresses,
        own_provides: OwnProvides | None = None,
        addr_rule: AddrRule = any_addr,
        k: int = amino.BUCKET_SIZE,
        max_message_size: int = amino.MAX_MESSAGE_SIZE,
        rng: random.Random | None = None,
    ):
        self.local = local
        self.table = table
        self.providers = providers
        self.values = values
        self.validator = validator
        self.address_book = address_book
        self.own_provides = own_provides
        self.addr_rule = addr_rule
        self.k = k
        self.max_message_size = max_message_size
        self._rng = rng or random.Random()
        self.counters: Counter[tuple[str, str]] = Counter()

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        try:
            kind = MessageType(request.type)
        except ValueError:
            self.counters[("unknown", "invalid")] += 1
            raise InvalidRequest(f"unknown message type {request.type!r}") from None
        handler = self._handlers[kind]
        try:
            reply = await handler(self, sender, request)
        except _Dropped as exc:
            self.counters[(kind.name, exc.outcome)] += 1
            log.debug("%s from %s dropped: %s", kind.name, sender.peer_id, exc.outcome)
            return None
        except InvalidRequest as exc:
            self.counters[(kind.name, "invalid")] += 1
            log.debug("invalid %s from %s: %s", kind.name, sender.peer_id, exc)
            raise
        except StoreError as exc:
            # A store (provider or value records) is down: it reports that once, and the
            # node's status shows it. go-libp2p-kad-dht's handlers return the datastore's
            # error, and the stream is reset. Writes are refused the same way, so the
            # sender knows nothing was stored; reads are answered with closer peers only
            # (what a peer that does not hold the key answers), so the requester's lookup
            # goes on through us instead of losing a hop.
            self.counters[(kind.name, "store_unavailable")] += 1
            log.debug("%s from %s: store unavailable: %s", kind.name, sender.peer_id, exc)
            if kind in (MessageType.GET_PROVIDERS, MessageType.GET_VALUE):
                target = Key.for_multihash(request.key) if kind is MessageType.GET_PROVIDERS else Key.for_record(request.key)
                return Message(kind, key=request.key, closer_peers=tuple(self._closer_peers(target, sender.peer_id)))
            raise InvalidRequest("store unavailable") from None
        self.counters[(kind.name, "ok")] += 1
        return reply

    async def _find_node(self, sender: PeerInfo, request: Message) -> Message:
        if not request.key:
            raise InvalidRequest("FIND_NODE with an empty key")
        closer = self._closer_peers(Key.hash(request.key), sender.peer_id)
        target = self._known_target(request.key, sender)
        if target is not None:
            # go handleFindPeer: the target first, whenever we know its addresses
            closer = [target] + [p for p in closer if p.peer_id != target.peer_id]
        return Message(MessageType.FIND_NODE, key=request.key, closer_peers=tuple(closer))

    async def _get_value(self, sender: PeerInfo, request: Message) -> Message:
        if not request.key:
            raise InvalidRequest("GET_VALUE with an empty key")
        record = await self.values.get(request.key)  # the store applies the age check
        closer = self._closer_peers(Key.for_record(request.key), sender.peer_id)
        return Message(MessageType.GET_VALUE, key=request.key, record=record, closer_peers=tuple(closer))

    async def _put_value(self, sender: PeerInfo, request: Message) -> Message:
        record = request.record
        if record is None:
            raise InvalidRequest("PUT_VALUE without a record")
        if record.key != request.key:
            raise InvalidRequest("PUT_VALUE whose message key differs from the record key")
        try:
            self.validator.validate(record.key, record.value)
        except RecordError as exc:
            raise InvalidRequest(f"invalid record: {exc}") from None
        kept = await self.values.put(Record(record.key, record.value))
        if kept.value != record.value:
            # go refuses the put when the stored record is better ("old record is newer").
            raise InvalidRequest("the stored record is better than the one offered")
        return Message(MessageType.PUT_VALUE, key=request.key, record=record)

    async def _add_provider(self, sender: PeerInfo, request: Message) -> None:
        announcement = self._announcement(sender, request)
        try:
            await self.providers.add_provider(*announcement)
        except QuotaExceeded as exc:
            # Dropped, not reset: ADD_PROVIDER gets no reply, and the sender's stream
            # may carry its next, acceptable, request (ipfs/specs PR #537 rejection).
            raise _Dropped(f"quota_{exc.reason}") from None
        except ValueError as exc:
            raise InvalidRequest(f"ADD_PROVIDER refused: {exc}") from None
        return None

    async def add_providers(self, sender: PeerInfo, requests: Sequence[Message]) -> None:
        """A stream's run of ADD_PROVIDERs: checked one by one as ``handle`` would, the
        valid ones before the first invalid one stored in one call (they share a group
        commit; one over a quota is dropped), then that one refused. Counted per request
        as ``handle`` counts."""
        announcements: list[Announcement] = []
        refused: InvalidRequest | None = None
        for request in requests:
            try:
                announcements.append(self._announcement(sender, request))
            except InvalidRequest as exc:
                refused = exc
                self.counters[("ADD_PROVIDER", "invalid")] += 1
                log.debug("invalid ADD_PROVIDER from %s: %s", sender.peer_id, exc)
                break
        if announcements:
            try:
                refusals = await self.providers.add_providers(announcements)
            except ValueError as exc:  # the handler's checks are the store's: not expected
                self.counters[("ADD_PROVIDER", "invalid")] += len(announcements)
                raise InvalidRequest(f"ADD_PROVIDER refused: {exc}") from None
            except StoreError as exc:
                self.counters[("ADD_PROVIDER", "store_unavailable")] += len(announcements)
                log.debug("ADD_PROVIDER from %s: store unavailable: %s", sender.peer_id, exc)
                raise InvalidRequest("store unavailable") from None
            for over in refusals:  # dropped, as ``_add_provider`` drops them
                outcome = "ok" if over is None else f"quota_{over.reason}"
                self.counters[("ADD_PROVIDER", outcome)] += 1
            if any(refusals):
                log.debug("ADD_PROVIDER from %s: %d over a quota, dropped", sender.peer_id, sum(1 for r in refusals if r))
        if refused is not None:
            raise refused

    def _announcement(self, sender: PeerInfo, request: Message) -> Announcement:
        """The record an ADD_PROVIDER asks to store: its key, the sender, the addresses
        the sender gave for itself. Entries naming other peers are ignored (counted)."""
        try:
            multihash.check_key(request.key)
        except multihash.MultihashError as exc:
            raise InvalidRequest(f"ADD_PROVIDER key: {exc}") from None
        own = [p for p in request.provider_peers if p.peer_id == sender.peer_id and p.addrs]
        foreign = sum(1 for p in request.provider_peers if p.peer_id != sender.peer_id)
        if foreign:
            self.counters[("ADD_PROVIDER", "foreign_provider_ignored")] += foreign
        if not own:
            raise InvalidRequest("ADD_PROVIDER with no entry for the sender that carries addresses")
        # go stores the provider even when no address passes the filter (it checks the
        # length first): a requester then looks its addresses up itself.
        addrs = self.addr_rule(dict.fromkeys(a for p in own for a in p.addrs))
        if not addrs:
            self.counters[("ADD_PROVIDER", "addrs_filtered")] += 1
        return request.key, sender.peer_id, addrs

    async def _get_providers(self, sender: PeerInfo, request: Message) -> Message:
        if not request.key or len(request.key) > amino.MAX_PROVIDER_KEY_BYTES:
            raise InvalidRequest(f"GET_PROVIDERS key of {len(request.key)} bytes")
        try:
            records = await self.providers.get_providers(request.key)
        except ValueError as exc:  # not a multihash
            raise InvalidRequest(f"GET_PROVIDERS key: {exc}") from None
        rule = self.addr_rule
        found = [PeerInfo(r.provider.peer_id, rule(r.provider.addrs)) for r in records if r.provider.peer_id != self.local.peer_id]
        self._rng.shuffle(found)
        if self.own_provides is not None and await self.own_provides(request.key):
            # Our provide list answers for us at once, and never expires while listed.
            found.insert(0, self.local)
        closer = self._closer_peers(Key.for_multihash(request.key), sender.peer_id)
        providers = found  # (a miss, most requests, has nothing to fit)
        budget = self.max_message_size - _FRAMING_MARGIN - len(request.key)
        if found and sum(map(_peer_size_bound, closer)) + sum(map(_peer_size_bound, found)) > budget:
            providers, budget = [], budget - sum(map(_peer_size, closer))
            for info in found:
                budget -= _peer_size(info)
                if budget < 0:
                    break
                providers.append(info)
        return Message(
            MessageType.GET_PROVIDERS, key=request.key, closer_peers=tuple(closer), provider_peers=tuple(providers)
        )

    async def _ping(self, sender: PeerInfo, request: Message) -> Message:
        return Message(MessageType.PING)

    _handlers = {
        MessageType.FIND_NODE: _find_node,
        MessageType.GET_VALUE: _get_value,
        MessageType.PUT_VALUE: _put_value,
        MessageType.ADD_PROVIDER: _add_provider,
        MessageType.GET_PROVIDERS: _get_providers,
        MessageType.PING: _ping,
    }

    def _closer_peers(self, target: Key, requester: PeerId) -> list[PeerInfo]:
        """The k closest servers we know with addresses, never ourselves nor the requester.
        Addresses come from the address book when it has some (fresher than the table's)."""
        closer = []
        for peer in self.table.local_closest_peers(target, self.k + 1):
            if peer.peer_id == requester or peer.peer_id == self.local.peer_id:
                continue
            addrs = self.addr_rule(self.address_book(peer.peer_id) or peer.addrs)
            if not addrs:
                addrs = self.addr_rule(peer.addrs)
            if addrs:
                closer.append(peer if addrs == peer.addrs else PeerInfo(peer.peer_id, addrs))
        return closer[: self.k]

    def _known_target(self, key: bytes, sender: PeerInfo) -> PeerInfo | None:
        """The FIND_NODE target itself when we know where it is, even when it is us, the
        requester or a client (spec "Discovering non-DHT Servers"; go handleFindPeer)."""
        try:
            target = PeerId.from_bytes(key)
        except PeerIdError:
            return None
        if target == self.local.peer_id:
            return self.local
        if target == sender.peer_id and (addrs := self.addr_rule(sender.addrs)):
            return sender if addrs == sender.addrs else PeerInfo(target, addrs)
        known = self.table.get(target)
        addrs = self.addr_rule(known.addrs if known is not None and known.addrs else self.address_book(target))
        return PeerInfo(target, addrs) if addrs else None


def _peer_size(info: PeerInfo) -> int:
    """The bytes one Message.Peer adds to a Message, as go's appendFittingProviderPeers
    counts them: its tag and length, then id, addresses and connection (2 bytes at most)."""
    peer_id = info.peer_id.to_bytes()
    inner = 1 + _varint_size(len(peer_id)) + len(peer_id) + 2
    inner += sum(1 + _varint_size(len(a)) + len(a) for a in info.addrs)
    return 1 + _varint_size(inner) + inner


def _peer_size_bound(info: PeerInfo) -> int:
    """At least ``_peer_size(info)`` (every length's varint taken as 4 bytes, enough
    below 256 MiB), and cheaper: when all peers fit by this bound, none is counted exactly."""
    return len(info.peer_id.to_bytes()) + 12 + sum(map(len, info.addrs)) + 5 * len(info.addrs)


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)
