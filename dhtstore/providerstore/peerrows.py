"""Which providers' ``peers`` rows a batch writes, on either dialect.

The record rows name their provider; its ``peers`` row holds the announced addresses
(and their 24 h expiry, as go keeps them with the peer, not the record) and when it
was last seen. A server hears the same providers all the time, and their row barely
changes, so a provider whose same addresses were written less than PEER_REFRESH ago
is not written again.
"""

from __future__ import annotations

from cachetools import LRUCache

from .pending import PendingRecord
from .validation import PROVIDER_ADDR_TTL_S

PEER_REFRESH = 60  # seconds: how stale peers.last_seen_at / addrs_expire_at may get


class PeerRows:
    def __init__(self, size: int):
        # peer -> (addresses, time) of the last ``peers`` row written for it
        self._written: LRUCache[bytes, tuple[tuple[bytes, ...], int]] = LRUCache(size)

    def to_write(self, batch: list[PendingRecord]) -> list[PendingRecord]:
        """The announcements whose provider's ``peers`` row to upsert, in peer order."""
        latest: dict[bytes, PendingRecord] = {}
        for p in batch:  # per peer: the latest announcement that carried addresses wins
            if p.addrs or p.peer not in latest:
                latest[p.peer] = p
        written = []
        for peer in sorted(latest):
            p = latest[peer]
            last = self._written.get(peer)
            if last is not None and last[1] > p.received_at - PEER_REFRESH and (not p.addrs or last[0] == p.addrs):
                continue
            written.append(p)
        return written

    def committed(self, written: list[PendingRecord]) -> None:
        """These rows (``to_write``'s) are committed."""
        for p in written:
            last = self._written.get(p.peer)
            self._written[p.peer] = (p.addrs or (last[0] if last else ()), p.received_at)


def addrs_expire_at(p: PendingRecord) -> int:
    """The ``peers.addrs_expire_at`` an announcement writes (0: it carried no addresses)."""
    return p.received_at + PROVIDER_ADDR_TTL_S if p.addrs else 0
