"""The sweep's per-region statements reach rows through the kad_key range alone, on
PostgreSQL too, whatever its statistics say: with next_due_at's or last_provided_at's
index in the plan, a list where most keys are due is read whole for every region (at
10M keys, 342 ms against 22 ms per region query; quadratic over a sweep)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import event, text

from dhtstore.data.schema import open_store
from dhtstore.multihash import cid_string
from dhtstore.provider.keyspace import Prefix
from dhtstore.provider.providelist import ProvideListStore

pytestmark = pytest.mark.anyio

KEYS = 20_000
NOW = 1_800_000_000
OTHER_INDEXES = ("ix_provided_keys_next_due_at", "ix_provided_keys_last_provided_at_added_at")


def mh(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"plan%d" % i).digest()


async def test_region_statements_use_only_the_kad_key_index_on_postgresql(pg_store_url: str) -> None:
    engine = await open_store(pg_store_url)
    try:
        store = ProvideListStore(engine)
        await store.add([(cid_string(mh(i)), mh(i)) for i in range(KEYS)], NOW)
        async with engine.begin() as conn:
            # Statistics that say no key is due and every key was provided (as after a
            # settled cycle), then every key due and never provided (as after an import,
            # before autovacuum's next ANALYZE): the planner then favours the other indexes.
            await conn.execute(text("ALTER TABLE provided_keys SET (autovacuum_enabled = false)"))
            await conn.execute(text(f"UPDATE provided_keys SET next_due_at = {NOW + 10**6}, last_provided_at = {NOW}"))
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE provided_keys"))
            await conn.commit()
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE provided_keys SET next_due_at = 0, last_provided_at = NULL"))

        statements: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if "kad_key BETWEEN" in statement and not statement.startswith("EXPLAIN"):
                statements.append((statement, parameters))

        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        region = Prefix(4, 0b1010)
        assert await store.due_keys(region, NOW, provided_before=NOW)
        assert await store.count_due(region, NOW, 100) == 100
        await store.realign(region, NOW, NOW - 10, NOW + 100)
        assert await store.due_under(region, NOW, "me") is not None
        event.remove(engine.sync_engine, "before_cursor_execute", capture)

        assert len(statements) == 4
        async with engine.connect() as conn:
            for statement, parameters in statements:
                plan = "\n".join(r[0] for r in await conn.exec_driver_sql("EXPLAIN " + statement, parameters))
                assert not [ix for ix in OTHER_INDEXES if ix in plan], f"{statement}\n{plan}"
            await conn.rollback()
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE provided_keys RESET (autovacuum_enabled)"))
        await engine.dispose()
