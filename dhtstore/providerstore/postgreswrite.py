"""The PostgreSQL write path: a batch is one statement on the writer's own connection.

The statement (``_BATCH``) upserts the providers' ``peers`` rows, then the records,
each from arrays, and runs in autocommit: it is its own transaction, committed
(synchronous_commit as the server has it) before the reply that wakes the callers.
One round trip per batch, and no pool checkout (whose pre-ping is three more); with
the quotas, one more before it on the same connection (``live_providers``).

Rows go in the order given: records by (key, provider), peers by peer id, so the
writers of several processes sharing the store lock rows in one order and cannot
deadlock.
"""

from __future__ import annotations

from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..data.addrs import pack_addrs
from ..data.engine import OPEN_ERRORS
from .peerrows import PeerRows, addrs_expire_at
from .pending import PendingRecord, record_rows

# The CTE writes the ``peers`` rows to completion (forced by the one-time filter) before
# any record row is read.
_BATCH = """
WITH written_peers AS (
    INSERT INTO peers AS cur (peer_id, peer_id_text, addrs, addrs_expire_at, protocols, agent, first_seen_at, last_seen_at)
    SELECT u.peer_id, u.peer_id_text, u.addrs, u.addrs_expire_at, '', '', u.seen_at, u.seen_at
    FROM unnest($6::bytea[], $7::text[], $8::bytea[], $9::bigint[], $10::bigint[])
        WITH ORDINALITY AS u(peer_id, peer_id_text, addrs, addrs_expire_at, seen_at, n)
    ORDER BY u.n
    ON CONFLICT (peer_id) DO UPDATE SET
        addrs = CASE WHEN octet_length(excluded.addrs) > 0 THEN excluded.addrs ELSE cur.addrs END,
        addrs_expire_at = CASE WHEN octet_length(excluded.addrs) > 0 THEN excluded.addrs_expire_at ELSE cur.addrs_expire_at END,
        last_seen_at = excluded.last_seen_at
    RETURNING 1
)
INSERT INTO provider_records AS cur (key_mh, peer_id, key_b58, received_at, expires_at)
SELECT r.key_mh, r.peer_id, r.key_b58, r.received_at, r.expires_at
FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::bigint[], $5::bigint[])
    WITH ORDINALITY AS r(key_mh, peer_id, key_b58, received_at, expires_at, n)
WHERE (SELECT count(*) FROM written_peers) >= 0
ORDER BY r.n
ON CONFLICT (key_mh, peer_id) DO UPDATE SET received_at = excluded.received_at, expires_at = excluded.expires_at
"""

# The providers of a batch's keys, for the quotas: one array parameter, so one prepared
# statement whatever the batch size. Expired rows are left out by the caller, not by
# the query: with ``expires_at > $2`` the planner AND-ed in the expiry index, a scan of
# every live record per batch (ingest fell from ~6k to ~900 records/s at 50k records).
_PROVIDERS_OF_KEYS = "SELECT key_mh, peer_id, expires_at FROM provider_records WHERE key_mh = ANY($1::bytea[])"


class PostgresWritePath:
    def __init__(self, engine: AsyncEngine, peer_rows: PeerRows):
        self._engine = engine
        self._peer_rows = peer_rows
        self._conn: AsyncConnection | None = None  # the writer's own, in autocommit

    @property
    def holds_connection(self) -> bool:
        """A connection from an earlier batch is held: it may have died while idle."""
        return self._conn is not None

    async def write(self, batch: list[PendingRecord]) -> None:
        """Commit the (sorted) batch's records and its providers' ``peers`` rows."""
        written = self._peer_rows.to_write(batch)
        peer_rows = [(p.peer, p.peer_text, pack_addrs(p.addrs), addrs_expire_at(p), p.received_at) for p in written]
        columns = [list(c) for c in zip(*record_rows(batch))] + ([list(c) for c in zip(*peer_rows)] or [[], [], [], [], []])
        conn = await self._connection()
        try:
            await conn.exec_driver_sql(_BATCH, tuple(columns))
        except BaseException:
            await self._drop_connection()
            raise
        self._peer_rows.committed(written)

    async def live_providers(self, keys: list[bytes], now: int) -> list[tuple[bytes, bytes]]:
        """On the writer's own connection: no pool checkout (whose pre-ping costs ~4 ms)."""
        conn = await self._connection()
        try:
            rows: list[Any] = list(await conn.exec_driver_sql(_PROVIDERS_OF_KEYS, (keys,)))
        except BaseException:
            await self._drop_connection()
            raise
        return [(bytes(key), bytes(peer)) for key, peer, expires_at in rows if expires_at > now]

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            conn = await self._engine.connect()
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            # Plan each execution for its arrays: a generic plan made while the table was
            # small kept seq-scanning it for the quota read as it grew (ingest at 50k
            # records: ~900 records/s with the cached plan, ~2.5k with this).
            await self._conn.exec_driver_sql("SET plan_cache_mode = force_custom_plan")
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close()
                except OPEN_ERRORS:
                    pass  # a dead connection: nothing of ours is on it

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.invalidate()  # not back to the pool: it may be what failed
                await conn.close()
