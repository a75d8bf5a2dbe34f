"""How the replies of a lookup become its result: one rule for each, used by the
generic algorithms of this package and by ``routing.router.KademliaRouter`` alike.

- ``ValueSearch``: GET_VALUE answers, validated as they arrive, the best kept and
  the peers that hold it (go-libp2p-kad-dht ``routing.go``: ``getValues``,
  ``processValues``, ``searchValueQuorum``), and which peers to correct afterwards.
- ``ProviderSet``: GET_PROVIDERS answers merged (``findProvidersAsyncRoutine``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache

from ..peerid import PeerId, PeerIdError
from ..records.api import RecordError, Validator
from ..types import Message, PeerInfo, Record
from .protocols import NotFound, QuorumFailed

log = logging.getLogger(__name__)


@lru_cache(maxsize=1 << 16)
def is_valid_peer_id(raw: bytes) -> bool:
    """Whether ``raw`` is a peer id (a multihash of a key, or of its hash)."""
    try:
        PeerId.from_bytes(raw)
    except PeerIdError:
        return False
    return True


class ValueSearch:
    """The valid records of one GET_VALUE lookup and the best of them.

    A reply counts when its record is for ``key`` and passes the validator; the best is
    chosen pairwise with ``Validator.select`` as answers arrive, as go does. With
    ``quorum`` > 0, ``on_reply`` says to stop once that many valid records came in.

    The stale-holder update (go ``SearchValue``): once a lookup has run to its end, the
    best record is PUT to each of its k closest peers that did not return it. A lookup
    that the quorum stopped early corrects no one: it has not established which peers
    are the closest.
    """

    def __init__(self, key: bytes, validator: Validator, quorum: int = 0) -> None:
        self.key = key
        self.quorum = quorum
        self._validator = validator
        self.records: list[Record] = []  # one per peer that sent a valid record
        self.best: bytes | None = None
        self._with_best: set[PeerId] = set()

    def on_reply(self, peer: PeerInfo, reply: Message) -> bool:
        """Take one answer; True when the quorum is reached."""
        record = reply.record
        if record is None or record.key != self.key:
            return False
        try:
            self._validator.validate(self.key, record.value)
        except RecordError as exc:
            log.debug("get_value: invalid record from %s: %s", peer.peer_id, exc)
            return False
        value = record.value
        self.records.append(Record(self.key, value, record.time_received))
        if self.best is None:
            self.best = value
            self._with_best = {peer.peer_id}
        elif value == self.best:
            self._with_best.add(peer.peer_id)
        else:
            try:
                newer = self._validator.select(self.key, [self.best, value]) == 1
            except RecordError as exc:
                log.debug("get_value: cannot order the record from %s: %s", peer.peer_id, exc)
                newer = False
            if newer:
                self.best = value
                self._with_best = {peer.peer_id}
        return self.quorum_reached

    @property
    def quorum_reached(self) -> bool:
        return self.quorum > 0 and len(self.records) >= self.quorum

    def stale(self, closest: Iterable[PeerInfo]) -> list[PeerInfo]:
        """The peers among ``closest`` (the lookup's k closest) that lack the best record."""
        if self.best is None:
            return []
        return [p for p in closest if p.peer_id not in self._with_best]

    def result(self) -> Record:
        """The best record of a lookup that ran to its end; NotFound when there is none,
        QuorumFailed when fewer than ``quorum`` valid records came in."""
        if self.best is None:
            raise NotFound(self.key)
        if self.quorum > 0 and len(self.records) < self.quorum:
            raise QuorumFailed(self.key, tuple(self.records), self.quorum)
        return Record(self.key, self.best)


class ProviderSet:
    """The providers of one GET_PROVIDERS lookup, merged as go's ``psTryAdd`` does: a
    provider is added while fewer than ``count`` are known (``count`` 0: no limit), and a
    known one without addresses takes them from a later entry that has some. Entries
    that are not peers or whose id is not a peer id are skipped and counted."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.skipped = 0
        self._found: dict[PeerId, PeerInfo] = {}

    def on_reply(self, peer: PeerInfo, reply: Message) -> bool:
        """Take one answer; True when ``count`` providers are known."""
        for info in reply.provider_peers:
            pid = info.peer_id if isinstance(info, PeerInfo) else None
            if not isinstance(pid, PeerId) or not is_valid_peer_id(pid.to_bytes()):
                self.skipped += 1
                continue
            known = self._found.get(pid)
            if known is None:
                if not self.enough:
                    self._found[pid] = info
            elif info.addrs and not known.addrs:
                self._found[pid] = info
        return self.enough

    @property
    def enough(self) -> bool:
        return self.count > 0 and len(self._found) >= self.count

    def providers(self) -> list[PeerInfo]:
        return list(self._found.values())
