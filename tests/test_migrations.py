"""Alembic migrations on SQLite and PostgreSQL: round trips, schema == models, the
revision guard at open."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from dhtstore.data import schema
from dhtstore.data.engine import default_store_url, make_engine
from dhtstore.data.models import metadata
from dhtstore.data.schema import (
    create_or_upgrade,
    downgrade,
    head_revision,
    open_store,
    upgrade,
)
from dhtstore.errors import StoreError

pytestmark = pytest.mark.anyio

TABLES = {t.name for t in metadata.sorted_tables}


def _diff(conn) -> list:
    return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)


async def _tables(engine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_downgrade_upgrade_and_schema_equals_models(empty_url: str) -> None:
    await create_or_upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        assert TABLES <= await _tables(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
        await downgrade(engine, "base")
        assert await _tables(engine) <= {"alembic_version"}
        await upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert await conn.run_sync(schema.current_revision) == head_revision()
    finally:
        await downgrade(engine, "base")  # leave the session's PG database empty for the next param
        await engine.dispose()


async def test_views_give_text_ids_and_the_clock(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO peers (peer_id, peer_id_text, addrs, addrs_expire_at, protocols, agent,"
                    " first_seen_at, last_seen_at) VALUES (:p, 'PEER', :a, 0, '', '', 0, 0)"
                ),
                {"p": b"\x00\x01", "a": b""},
            )
            await conn.execute(
                text(
                    "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at)"
                    " VALUES (:k, :p, 'QmX', 0, 86400)"
                ),
                {"k": b"\x12\x01", "p": b"\x00\x01"},
            )
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT * FROM v_provider_records"))).one()
            now = (await conn.execute(text("SELECT now FROM clock"))).scalar_one()
        assert (row.key_b58, row.peer_id, row.expires_utc) == ("QmX", "PEER", "1970-01-02 00:00:00")
        assert now > 1_700_000_000
    finally:
        await engine.dispose()


async def test_open_store_accepts_head(store_url: str) -> None:
    engine = await open_store(store_url)
    await engine.dispose()


async def test_open_store_refuses_missing_sqlite_file_without_creating_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="dhtstore init"):
        await open_store(default_store_url(tmp_path))
    assert list(tmp_path.iterdir()) == []


async def test_open_store_refuses_uninitialised_store(empty_url: str) -> None:
    if empty_url.startswith("sqlite"):
        Path(empty_url.split("///", 1)[1]).touch()
    with pytest.raises(StoreError, match="dhtstore db upgrade"):
        await open_store(empty_url)


async def test_open_store_refuses_older_revision(sqlite_store_url: str) -> None:
    engine = make_engine(sqlite_store_url)
    await downgrade(engine, "0001")
    await engine.dispose()
    with pytest.raises(StoreError, match=rf"revision 0001, older than this dhtstore's {head_revision()}: run `dhtstore db upgrade`"):
        await open_store(sqlite_store_url)


async def test_open_store_refuses_newer_revision_naming_both(store_url: str) -> None:
    engine = make_engine(store_url)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dface'"))
    await engine.dispose()
    with pytest.raises(StoreError, match=rf"f00dface, newer than this dhtstore's {head_revision()}"):
        await open_store(store_url)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("postgresql+asyncpg://postgres@127.0.0.1:1/nothere", "cannot open store"),
        ("mysql://x@localhost/db", "unsupported store"),
        ("not a url", "not a database URL"),
    ],
)
async def test_unopenable_url_is_one_line(url: str, reason: str) -> None:
    with pytest.raises(StoreError, match=reason) as info:
        await open_store(url)
    assert "\n" not in str(info.value)
