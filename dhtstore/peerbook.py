"""What the node learns about peers from identify, kept in the ``peers`` table so that
``select agent, count(*) from peers group by agent`` answers with no helper.

Identify arrives per connection, often many a second; the book keeps the latest info
per peer in memory (bounded) and writes it in one transaction every ``FLUSH_INTERVAL``.
It updates protocols, agent and last-seen time; addresses are written only for a peer
new to the table, since the provider store owns a provider's announced addresses and
their 24 h expiry. Rows of peers not seen for ``FORGET_AFTER`` that provide nothing are
deleted in batches, so the table does not grow without bound. Each row is bounded
too, whatever a peer claims: at most ``MAX_ROW_ADDRS`` addresses (go keeps 20 for a peer
no longer connected, and the row outlives the connection) of at most
``MAX_ROW_ADDR_BYTES`` in all, protocols up to ``MAX_ROW_PROTOCOL_BYTES`` and an agent
of ``MAX_AGENT_CHARS``: a row stays under ~7 KiB. A database failure raises
StoreUnavailable (``data.failures``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import anyio
from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .amino import PROVIDER_ADDR_TTL
from .data.addrs import pack_addrs
from .data.dialects import upsert
from .data.failures import unavailable
from .data.models import PeerRow, ProviderRecordRow
from .errors import StoreError
from .network.api import IdentifyInfo
from .peerid import PeerId

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 30.0
MAX_PENDING = 10_000  # peers waiting to be written; the oldest updates are dropped past it
FORGET_AFTER = 7 * 24 * 3600
PRUNE_BATCH = 1000
MAX_PRUNE_BATCHES = 1000  # bounds one prune run
MAX_ROW_ADDRS = 20  # go-libp2p identify recentlyConnectedPeerMaxAddrs
MAX_ROW_ADDR_BYTES = 2048
MAX_ROW_PROTOCOL_BYTES = 4096  # a Kubo node lists ~30 protocols in ~1 KiB
MAX_AGENT_CHARS = 256


class PeerBook:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time):
        self._engine = engine
        self._clock = clock
        self._pending: OrderedDict[PeerId, tuple[IdentifyInfo, int]] = OrderedDict()
        self._upsert = upsert(engine, PeerRow, ["peer_id"], ["protocols", "agent", "last_seen_at"])
        self.written = 0

    def on_identify(self, peer: PeerId, info: IdentifyInfo) -> None:
        """Host callback: remember the latest info; the next flush writes it."""
        self._pending.pop(peer, None)
        self._pending[peer] = (info, int(self._clock()))
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    async def flush(self) -> int:
        if not self._pending:
            return 0
        pending, self._pending = self._pending, OrderedDict()
        rows = [
            {
                "peer_id": peer.to_bytes(),
                "peer_id_text": peer.to_base58(),
                "addrs": pack_addrs(addrs := _bounded_addrs(info.listen_addrs)),
                "addrs_expire_at": seen + int(PROVIDER_ADDR_TTL.total_seconds()) if addrs else 0,
                "protocols": _bounded_protocols(info.protocols),
                "agent": (info.agent_version or "")[:MAX_AGENT_CHARS],
                "first_seen_at": seen,
                "last_seen_at": seen,
            }
            for peer, (info, seen) in sorted(pending.items(), key=lambda item: item[0].to_bytes())
        ]
        with unavailable("peer book"):
            async with self._engine.begin() as conn:
                await conn.execute(self._upsert, rows)
        self.written += len(rows)
        return len(rows)

    async def prune(self) -> int:
        """Delete peers not seen for FORGET_AFTER that no provider record names."""
        cutoff = int(self._clock()) - FORGET_AFTER
        doomed = (
            select(PeerRow.peer_id)
            .where(PeerRow.last_seen_at < cutoff, ~exists().where(ProviderRecordRow.peer_id == PeerRow.peer_id))
            .limit(PRUNE_BATCH)
        )
        deleted = 0
        for _ in range(MAX_PRUNE_BATCHES):
            with unavailable("peer book"):
                async with self._engine.begin() as conn:
                    n: int = (await conn.execute(delete(PeerRow).where(PeerRow.peer_id.in_(doomed)))).rowcount
            deleted += n
            if n < PRUNE_BATCH:
                break
        return deleted

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL and prune hourly, until cancelled (then flush once more)."""
        last_prune = float("-inf")
        try:
            while True:
                await anyio.sleep(FLUSH_INTERVAL)
                try:
                    # Shielded (bounded): a write cut by cancellation would leave SQLAlchemy
                    # a connection to terminate after the engine is gone.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(60):
                        await self.flush()
                        if time.monotonic() - last_prune > 3600:
                            last_prune = time.monotonic()
                            await self.prune()
                except StoreError as exc:  # the store may be down; identify goes on
                    log.warning("peer book not written: %s", exc)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.flush()
                except StoreError as exc:
                    log.warning("peer book not written at shutdown: %s", exc)


def _bounded_addrs(addrs: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The first addresses, up to MAX_ROW_ADDRS and MAX_ROW_ADDR_BYTES in all."""
    kept: list[bytes] = []
    size = 0
    for addr in addrs[:MAX_ROW_ADDRS]:
        size += len(addr)
        if size > MAX_ROW_ADDR_BYTES:
            break
        kept.append(addr)
    return tuple(kept)


def _bounded_protocols(protocols: tuple[str, ...]) -> str:
    """The protocols, one a line, the whole ones that fit in MAX_ROW_PROTOCOL_BYTES."""
    kept: list[str] = []
    size = 0
    for protocol in protocols:
        size += len(protocol.encode()) + 1
        if size > MAX_ROW_PROTOCOL_BYTES:
            break
        kept.append(protocol)
    return "\n".join(kept)
