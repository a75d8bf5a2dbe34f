"""Revision 0008 (the key feeds) on a store filled at 0007: every row kept; on
PostgreSQL an INSERT into provider_records or provided_keys notifies its keys (an upsert
that updates a row does not); the downgrade back to 0007 drops the triggers and keeps
the rows."""

from __future__ import annotations

import hashlib

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url

from dhtstore.data.engine import make_engine
from dhtstore.data.keyfeed import PROVIDED_KEYS, PROVIDER_KEYS
from dhtstore.data.models import ProviderRecordRow
from dhtstore.data.schema import downgrade, upgrade

pytestmark = pytest.mark.anyio

REVISION, PREVIOUS = "0008", "0007"


def _record(i: int) -> dict[str, object]:
    return {
        "key_mh": b"\x12\x20" + hashlib.sha256(b"key %d" % i).digest(),
        "peer_id": b"peer %d" % (i % 3),
        "key_b58": f"Qm{i}",
        "received_at": 1_900_000_000 + i,
        "expires_at": 1_900_172_800 + i,
    }


async def _rows(engine) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        r = ProviderRecordRow
        return [x._asdict() for x in (await conn.execute(select(*r.__table__.c).order_by(r.key_mh, r.peer_id))).all()]


async def _notified(url: str, statement: str, channel: str = PROVIDER_KEYS) -> list[str]:
    """The payloads on ``channel`` while ``statement`` runs on another connection."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    listener, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    payloads: list[str] = []
    try:
        await listener.add_listener(channel, lambda _c, _p, _ch, payload: payloads.append(payload))
        await writer.execute(statement)
        await listener.execute("SELECT 1")  # the notifications are read before this reply
    finally:
        await listener.close()
        await writer.close()
    return payloads


async def test_upgrade_from_a_filled_0007_store_keeps_every_row_and_downgrades(empty_url: str) -> None:
    engine = make_engine(empty_url)
    postgresql = empty_url.startswith("postgresql")
    try:
        await upgrade(engine, PREVIOUS)
        records = sorted((_record(i) for i in range(50)), key=lambda r: (r["key_mh"], r["peer_id"]))
        async with engine.begin() as conn:
            await conn.execute(insert(ProviderRecordRow), records)

        await upgrade(engine, REVISION)
        assert await _rows(engine) == records
        if postgresql:
            new = b"\x12\x20" + bytes(32)
            payloads = await _notified(empty_url, (
                "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at) VALUES "
                f"('\\x{new.hex()}', 'p', 'Qm', 1, 2), ('\\x{records[0]['key_mh'].hex()}', 'another peer', 'Qm', 1, 2)"
            ))  # fmt: skip
            assert sorted(k for p in payloads for k in p.split(",")) == sorted([new.hex(), records[0]["key_mh"].hex()])
            known = records[1]
            upsert = (
                "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at) VALUES "
                f"('\\x{known['key_mh'].hex()}', '\\x{known['peer_id'].hex()}', 'Qm', 1, 2) "
                "ON CONFLICT (key_mh, peer_id) DO UPDATE SET expires_at = 3"
            )
            assert await _notified(empty_url, upsert) == []  # an update adds no key
            listed = await _notified(empty_url, (
                "INSERT INTO provided_keys (cid, multihash, kad_key, added_at, next_due_at, attempts) "
                f"VALUES ('bafy', '\\x{new.hex()}', '\\x00', 1, 2, 0)"
            ), PROVIDED_KEYS)  # fmt: skip
            assert listed == [new.hex()]
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM provided_keys"))
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM provider_records WHERE received_at < 100 OR expires_at = 3"))
            records = [r for r in records if r is not known]

        await downgrade(engine, PREVIOUS)
        assert await _rows(engine) == records
        if postgresql:
            assert await _notified(empty_url, (
                "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at) "
                "VALUES ('\\x1220ff', 'p', 'Qm', 1, 2)"
            )) == []  # fmt: skip
        await downgrade(engine, "base")  # leave the session's PG database empty for the next test
    finally:
        await engine.dispose()
