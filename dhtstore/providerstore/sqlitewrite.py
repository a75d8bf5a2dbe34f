"""The SQLite write path: a batch is one transaction of three statements.

A SQLite store has one writer at a time (the file's write lock), so the order of the
statements' rows does not matter; on WAL with synchronous=NORMAL a committed batch
survives the process being killed, and only a power loss can take the last ones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..data.addrs import pack_addrs
from ..data.dialects import upsert
from ..data.models import PeerRow, ProviderRecordRow
from .peerrows import PeerRows, addrs_expire_at
from .pending import PendingRecord, record_rows


class SqliteWritePath:
    holds_connection = False  # a pool checkout per batch: a local file has no connection to lose

    def __init__(self, engine: AsyncEngine, peer_rows: PeerRows):
        self._engine = engine
        self._peer_rows = peer_rows
        # The hot statement, compiled once to the driver's SQL and run with positional
        # rows, so SQLAlchemy does no per-row parameter processing.
        compiled = upsert(engine, ProviderRecordRow, ["key_mh", "peer_id"], ["received_at", "expires_at"]).compile(
            dialect=engine.dialect
        )
        assert compiled.positiontup == ["key_mh", "peer_id", "key_b58", "received_at", "expires_at"]
        self._upsert_records_sql = str(compiled)
        self._upsert_peer_addrs = upsert(engine, PeerRow, ["peer_id"], ["addrs", "addrs_expire_at", "last_seen_at"])
        self._upsert_peer_seen = upsert(engine, PeerRow, ["peer_id"], ["last_seen_at"])

    async def write(self, batch: list[PendingRecord]) -> None:
        """Commit the batch's records and its providers' ``peers`` rows."""
        written = self._peer_rows.to_write(batch)
        rows = record_rows(batch)
        with_addrs: list[dict[str, Any]] = []
        without: list[dict[str, Any]] = []
        for p in written:  # two statements: a row with addresses replaces them, one without keeps them
            row = {"peer_id": p.peer, "peer_id_text": p.peer_text, "addrs": pack_addrs(p.addrs),
                   "addrs_expire_at": addrs_expire_at(p), "protocols": "", "agent": "",
                   "first_seen_at": p.received_at, "last_seen_at": p.received_at}
            (with_addrs if p.addrs else without).append(row)
        async with self._engine.begin() as conn:
            if with_addrs:
                await conn.execute(self._upsert_peer_addrs, with_addrs)
            if without:
                await conn.execute(self._upsert_peer_seen, without)
            await conn.exec_driver_sql(self._upsert_records_sql, rows)
        self._peer_rows.committed(written)

    async def live_providers(self, keys: list[bytes], now: int) -> list[tuple[bytes, bytes]]:
        r = ProviderRecordRow  # expired rows left out here, not by an index: see postgreswrite
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(r.key_mh, r.peer_id, r.expires_at).where(r.key_mh.in_(keys)))).all()
        return [(bytes(k), bytes(p)) for k, p, expires_at in rows if expires_at > now]

    async def close(self) -> None:
        pass
