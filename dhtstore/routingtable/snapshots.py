"""Routing-table snapshots in the store, so a restarted node does not start from nothing.

A snapshot is one ``routing_snapshots`` row plus one ``routing_snapshot_peers`` row per
peer, written in one transaction. Only the newest few are kept. Loaded peers are only
candidates: the node re-checks each (dial, identify) before it enters the table.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.addrs import pack_addrs, unpack_addrs
from ..data.models import RoutingSnapshotPeerRow, RoutingSnapshotRow
from ..peerid import PeerId, PeerIdError
from ..types import PeerInfo

KEEP_SNAPSHOTS = 3


async def save_snapshot(
    engine: AsyncEngine, local: PeerId, peers: list[PeerInfo], now: float | None = None, keep: int = KEEP_SNAPSHOTS
) -> int:
    """Write a snapshot of ``peers``; drop all but the newest ``keep``. Returns its id."""
    taken_at = int(time.time() if now is None else now)
    async with engine.begin() as conn:
        result = await conn.execute(
            insert(RoutingSnapshotRow).values(local_peer_id=local.to_bytes(), taken_at=taken_at)
        )
        key = result.inserted_primary_key
        assert key is not None  # an INSERT of one row
        snapshot_id = key[0]
        if peers:
            await conn.execute(
                insert(RoutingSnapshotPeerRow),
                [
                    {
                        "snapshot_id": snapshot_id,
                        "peer_id": p.peer_id.to_bytes(),
                        "peer_id_text": p.peer_id.to_base58(),
                        "addrs": pack_addrs(p.addrs),
                        "added_at": taken_at,
                    }
                    for p in {p.peer_id: p for p in peers}.values()
                ],
            )
        old = (
            select(RoutingSnapshotRow.id)
            .where(RoutingSnapshotRow.local_peer_id == local.to_bytes())
            .order_by(RoutingSnapshotRow.taken_at.desc(), RoutingSnapshotRow.id.desc())
            .offset(keep)
        )
        stale = [row[0] for row in (await conn.execute(old)).all()]
        if stale:
            # Children first: SQLite enforces the foreign key, and not every store
            # was created with ON DELETE CASCADE honoured by its driver.
            await conn.execute(delete(RoutingSnapshotPeerRow).where(RoutingSnapshotPeerRow.snapshot_id.in_(stale)))
            await conn.execute(delete(RoutingSnapshotRow).where(RoutingSnapshotRow.id.in_(stale)))
    return int(snapshot_id)


async def load_latest_snapshot(engine: AsyncEngine, local: PeerId) -> list[PeerInfo]:
    """The peers of the newest snapshot of ``local``'s table (rows that no longer parse are skipped)."""
    async with engine.connect() as conn:
        newest = (
            await conn.execute(
                select(RoutingSnapshotRow.id)
                .where(RoutingSnapshotRow.local_peer_id == local.to_bytes())
                .order_by(RoutingSnapshotRow.taken_at.desc(), RoutingSnapshotRow.id.desc())
                .limit(1)
            )
        ).scalar()
        if newest is None:
            return []
        rows = (
            await conn.execute(
                select(RoutingSnapshotPeerRow.peer_id, RoutingSnapshotPeerRow.addrs).where(
                    RoutingSnapshotPeerRow.snapshot_id == newest
                )
            )
        ).all()
    peers = []
    for peer_id, addrs in rows:
        try:
            peers.append(PeerInfo(PeerId.from_bytes(peer_id), unpack_addrs(addrs)))
        except (PeerIdError, ValueError):
            continue
    return peers
