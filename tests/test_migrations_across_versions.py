"""Every schema revision upgrades a filled store to head without losing a row, and
downgrades back to it: on SQLite and PostgreSQL, for each revision in
``migrations/versions`` (found at collection time, so a new revision is covered
without editing this file).

For revision R: migrate an empty store to R, fill each table that exists at R with
representative rows (built from the columns R has, by name: a ``peer_id`` column gets
a real peer id, ``addrs`` packed multiaddrs, ``*_at`` epoch seconds, …; a column this
file does not know gets a value of its type), upgrade to head, check that every row
is still there (columns R and head share compare equal) and that the current code
reads it (provider store, value store, routing-table snapshot, store stats), then
downgrade to R and check the rows once more.

A revision that transforms data (a renamed column, a split table) needs its own
expectations: add them to ``EXPECTED_CHANGES`` with the revision that made them.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, select, types
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.addrs import pack_addrs
from dhtstore.data.engine import default_store_url, make_engine
from dhtstore.data.schema import (
    alembic_config,
    downgrade,
    head_revision,
    open_store,
    upgrade,
)
from dhtstore.data.stats import store_stats
from dhtstore.multihash import SHA2_256, Multihash, cid_string
from dhtstore.peerid import PeerId
from dhtstore.providerstore.sql import SqlProviderStore
from dhtstore.providerstore.validation import base58btc
from dhtstore.records.api import key_text
from dhtstore.records.sql import SqlValueStore
from dhtstore.records.validators import NamespacedValidator
from dhtstore.routingtable.snapshots import load_latest_snapshot

pytestmark = pytest.mark.anyio

ROWS_PER_TABLE = 3
NOW = 1_900_000_000  # records filled "now" and read with this clock: live, not expired
ADDR = b"\x04\x7f\x00\x00\x01\x06\x0f\xa1"  # /ip4/127.0.0.1/tcp/4001


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


# Revision -> {table: fn(old row) -> the row expected at head}, for data a revision
# changes on purpose. Empty while every revision only adds.
EXPECTED_CHANGES: dict[str, dict[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


# Tables the store derives from others (triggers): not filled here, checked by their own tests.
DERIVED = ("provide_counters",)

# -- representative rows -------------------------------------------------------------

KEYS = [PrivateKey.generate() for _ in range(ROWS_PER_TABLE)]
PEERS = [k.peer_id() for k in KEYS]
MULTIHASHES = [Multihash(SHA2_256, hashlib.sha256(b"block %d" % i).digest()).to_bytes() for i in range(ROWS_PER_TABLE)]


def _pk_key(i: int) -> bytes:
    return b"/pk/" + PEERS[i].to_bytes()


# Values by column name, for row i: what the current code expects in such a column.
KNOWN: dict[str, Callable[[int], Any]] = {
    "key_mh": lambda i: MULTIHASHES[i],
    "multihash": lambda i: MULTIHASHES[i],
    "key_b58": lambda i: base58btc(MULTIHASHES[i]),
    "cid": lambda i: cid_string(MULTIHASHES[i]),
    "kad_key": lambda i: hashlib.sha256(MULTIHASHES[i]).digest(),
    "peer_id": lambda i: PEERS[i].to_bytes(),
    "local_peer_id": lambda i: PEERS[0].to_bytes(),
    "peer_id_text": lambda i: str(PEERS[i]),
    "addrs": lambda i: pack_addrs((ADDR,)),
    "protocols": lambda i: "/ipfs/kad/1.0.0",
    "agent": lambda i: "kubo/0.30.0",
    "record_key": _pk_key,
    "record_key_text": lambda i: key_text(_pk_key(i)),
    "value": lambda i: KEYS[i].public_key().to_protobuf(),  # a valid /pk/ record
    "prefix": lambda i: bytes([i << 6]) + bytes(31),
    "prefix_len": lambda i: 2,
    "name": lambda i: f"state-{i}",
    "expires_at": lambda i: NOW + 40 * 3600,
    "addrs_expire_at": lambda i: NOW + 20 * 3600,
    "next_due_at": lambda i: NOW + 3600 * (i + 1),
    "snapshot_id": lambda i: 1,
    "id": lambda i: i + 1,
}


def _fits(value: Any, kind: types.TypeEngine) -> bool:
    if isinstance(kind, types.Integer):
        return isinstance(value, int)
    if isinstance(kind, types.LargeBinary | types._Binary):
        return isinstance(value, bytes)
    return isinstance(value, str)


def _value(table: str, column: Any, i: int) -> Any:
    if column.name in KNOWN and _fits(value := KNOWN[column.name](i), column.type):
        return value  # (a known name of another type, e.g. provider_state.value, falls through)
    if column.name.endswith("_at"):
        return NOW - 60 * i
    kind = column.type
    if isinstance(kind, types.Integer):
        return i
    if isinstance(kind, types.LargeBinary | types._Binary):
        return b"\x00\x01" + bytes([i])
    if isinstance(kind, types.Boolean):
        return bool(i % 2)
    if isinstance(kind, types.String | types.Text):
        return f"{column.name} {i}"
    if column.nullable:
        return None
    raise AssertionError(f"no representative value for {table}.{column.name} ({kind}): add it to KNOWN")


def representative_rows(metadata: MetaData) -> dict[str, list[dict[str, Any]]]:
    rows = {}
    for table in metadata.sorted_tables:
        if table.name in ("alembic_version", *DERIVED):
            continue
        rows[table.name] = [{c.name: _value(table.name, c, i) for c in table.columns} for i in range(ROWS_PER_TABLE)]
    return rows


# -- helpers ---------------------------------------------------------------------------


async def reflect(engine: AsyncEngine) -> MetaData:
    metadata = MetaData()
    async with engine.connect() as conn:
        await conn.run_sync(metadata.reflect)
    return metadata


async def table_rows(engine: AsyncEngine, table: Table) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(select(table))).all()]


def _key(row: dict[str, Any], columns: list[str]) -> tuple:
    return tuple(bytes(row[c]) if isinstance(row[c], memoryview) else row[c] for c in columns)


async def assert_rows_kept(engine: AsyncEngine, filled: dict[str, list[dict[str, Any]]], since: str) -> None:
    """Every filled row is in the store, with equal values in the columns both schemas have."""
    changes = {t: fn for rev in revisions()[revisions().index(since) + 1 :] for t, fn in EXPECTED_CHANGES.get(rev, {}).items()}
    now = await reflect(engine)
    for name, rows in filled.items():
        assert name in now.tables, f"table {name} was dropped"
        table = now.tables[name]
        expected = [changes[name](r) if name in changes else r for r in rows]
        shared = sorted(set(table.columns.keys()) & set(expected[0]))
        found = {_key(r, shared) for r in await table_rows(engine, table)}
        assert found == {_key(r, shared) for r in expected}, f"rows of {name} changed"


async def assert_current_code_reads(engine: AsyncEngine, filled: dict[str, list[dict[str, Any]]]) -> None:
    async with SqlProviderStore(engine, clock=lambda: NOW) as providers:
        for row in filled.get("provider_records", []):
            got = await providers.get_providers(bytes(row["key_mh"]))
            assert [(r.provider.peer_id.to_bytes(), r.provider.addrs) for r in got] == [(bytes(row["peer_id"]), (ADDR,))]
    values = SqlValueStore(engine, NamespacedValidator(), clock=lambda: NOW)
    for row in filled.get("value_records", []):
        record = await values.get(bytes(row["record_key"]))
        assert record is not None and record.value == row["value"]
    if "routing_snapshots" in filled:
        peers = await load_latest_snapshot(engine, PeerId(filled["routing_snapshots"][0]["local_peer_id"]))
        assert {p.peer_id for p in peers} == {PeerId(r["peer_id"]) for r in filled["routing_snapshot_peers"] if r["snapshot_id"] == 1}
    stats = await store_stats(engine, now=NOW)
    assert all(stats.rows[name] == len(rows) for name, rows in filled.items() if name in stats.rows)


# -- stores ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of its own (these tests migrate up and down freely)."""
    if request.param == "sqlite":
        yield default_store_url(tmp_path)
        return
    pg_url = request.getfixturevalue("pg_url")
    u = make_url(pg_url)
    name = f"dhtstore_mig_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432, database=u.database)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield u.set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.mark.parametrize("revision", revisions())
async def test_a_filled_store_at_each_revision_upgrades_to_head_and_back(empty_store: str, revision: str) -> None:
    engine = make_engine(empty_store)
    try:
        await upgrade(engine, revision)
        filled = representative_rows(await reflect(engine))
        async with engine.begin() as conn:
            old = await reflect(engine)
            for table in old.sorted_tables:
                if table.name in filled:
                    await conn.execute(table.insert(), filled[table.name])

        await upgrade(engine)
        await assert_rows_kept(engine, filled, since=revision)
        await assert_current_code_reads(engine, filled)
        (await open_store(empty_store)).sync_engine.dispose()  # the guard accepts it: at head

        await downgrade(engine, revision)
        await assert_rows_kept(engine, filled, since=revision)
    finally:
        await engine.dispose()


def test_revisions_form_one_line_from_base_to_head() -> None:
    found = revisions()
    assert found and found[-1] == head_revision()
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "two heads: merge them with a new revision"
    for older, newer in zip(found, found[1:], strict=False):
        assert script.get_revision(newer).down_revision == older


def test_readme_shows_the_refusal_messages_the_code_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """README "Upgrading" quotes both refusals for revisions 0001 and 0002; they are the
    guard's messages (whatever the real revisions are)."""
    from dhtstore.data import schema
    from dhtstore.errors import StoreError

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    store = "postgresql+asyncpg://dht@127.0.0.1/dht"
    for head, found in (("0002", "0001"), ("0001", "0002")):  # newer code, then newer store
        monkeypatch.setattr(schema, "head_revision", lambda head=head: head)
        monkeypatch.setattr(schema, "_known_revisions", lambda head=head: {"0001", head})
        with pytest.raises(StoreError) as refused:
            schema.check_revision(store, found, has_tables=True)
        message = str(refused.value)
        assert f"revision {found}" in message and f"dhtstore's {head}" in message and "`dhtstore db " in message
        assert f"Error: {message}\n" in readme, message
