"""``dhtstore db copy``'s logic: SQLite → PostgreSQL → SQLite, resuming, refusing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select, text

from dhtstore.data.copy import COPY_MARKER, CopyError, copy_store
from dhtstore.data.engine import default_store_url
from dhtstore.data.models import (
    CrawlClaimRow,
    CrawlHeadRow,
    NetworkPeerRow,
    PeerRow,
    ProvidedKeyRow,
    ProviderRecordRow,
    ProviderStateRow,
    ReprovideClaimRow,
    ReprovideRegionRow,
    RoutingSnapshotPeerRow,
    RoutingSnapshotRow,
    ValueRecordRow,
    metadata,
)
from dhtstore.data.schema import open_store
from dhtstore.errors import StoreError

pytestmark = pytest.mark.anyio

STORED = [t for t in metadata.sorted_tables if not t.info.get("derived")]  # counters are the target's triggers'
TABLES = [t.name for t in STORED]


def _h(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def rows_for_every_table(n: int) -> dict[type, list[dict[str, object]]]:
    """n rows (roughly) per table, with NULLs, empty blobs, non-ASCII text and big ints."""
    mh = [b"\x12\x20" + _h("mh", i) for i in range(n)]
    peers = [b"\x00\x24\x08\x01\x12\x20" + _h("peer", i) for i in range(n)]
    return {
        ProviderRecordRow: [
            dict(key_mh=mh[i], peer_id=peers[j], key_b58=f"Qm{i}", received_at=1_700_000_000 + i, expires_at=2**40 + j)
            for i in range(n) for j in range(2)
        ],
        PeerRow: [
            dict(peer_id=p, peer_id_text=f"12D3KooW{i}", addrs=b"" if i % 2 else b"\x08\x04\x7f\x00\x00\x01",
                 addrs_expire_at=i, protocols="/ipfs/kad/1.0.0\n/ipfs/id/1.0.0", agent="agent ✓ é", first_seen_at=1,
                 last_seen_at=2)
            for i, p in enumerate(peers)
        ],
        ProvidedKeyRow: [
            dict(id=i + 1, cid=f"bafk{i}", multihash=mh[i], kad_key=_h("kad", i), added_at=5, next_due_at=6 + i,
                 last_provided_at=None if i % 3 else 7, attempts=i, last_error=None if i % 2 else "timeout")
            for i in range(n)
        ],
        RoutingSnapshotRow: [dict(id=i + 1, local_peer_id=peers[0], taken_at=100 + i) for i in range(2)],
        RoutingSnapshotPeerRow: [
            dict(snapshot_id=1 + i % 2, peer_id=p, peer_id_text=f"12D3KooW{i}", addrs=b"\x01", added_at=9)
            for i, p in enumerate(peers)
        ],
        ValueRecordRow: [
            dict(record_key=b"/pk/" + p, record_key_text=f"/pk/{i}", value=_h("v", i) * 8, received_at=11)
            for i, p in enumerate(peers)
        ],
        ReprovideRegionRow: [
            dict(prefix=bytes([i]) + b"\x00" * 31, prefix_len=8, next_due_at=12, last_run_at=None, attempts=0,
                 last_error=None)
            for i in range(min(n, 256))
        ],
        ReprovideClaimRow: [
            dict(region=format(i, "08b") + "*", first_key=bytes([i]) + b"\x00" * 31, last_key=bytes([i]) + b"\xff" * 31,
                 owner=f"12D3KooW{i}", claimed_at=14, expires_at=15)
            for i in range(min(n, 256))
        ],
        NetworkPeerRow: [
            dict(peer_id=p, peer_id_text=f"12D3KooW{i}", kad_key=hashlib.sha256(p).digest(), addrs=_h("na", i),
                 addr_kinds="ip4/tcp", agent="kubo/0.39.0", protocols="/ipfs/kad/1.0.0", first_seen_at=16,
                 last_seen_at=17, last_contact_at=None if i % 2 else 18, failures=i % 3, crawled_at=None if i % 5 else 19)
            for i, p in enumerate(peers)
        ],
        CrawlHeadRow: [dict(owner=f"12D3KooW{i}", started_at=20, expires_at=21 + i) for i in range(3)],
        CrawlClaimRow: [
            dict(shard_bits=4, shard=i, owner=f"12D3KooW{i % 3}", claimed_at=22, expires_at=23) for i in range(16)
        ],
        ProviderStateRow: [dict(name=f"state-{i}", value=f"v{i}", updated_at=13) for i in range(n)]
        + [dict(name="Zeta", value="", updated_at=0), dict(name="alpha", value="x", updated_at=0)],
    }


async def fill(url: str, n: int) -> None:
    engine = await open_store(url)
    try:
        async with engine.begin() as conn:
            for model, rows in rows_for_every_table(n).items():
                await conn.execute(model.__table__.insert(), rows)
    finally:
        await engine.dispose()


async def dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = await open_store(url)
    try:
        async with engine.connect() as conn:
            return {t.name: sorted(map(tuple, (await conn.execute(select(t))).all()), key=repr) for t in STORED}
    finally:
        await engine.dispose()


class Interrupt(Exception):
    pass


class StopAfter:
    """A progress sink that interrupts the copy after ``batches`` batches."""

    def __init__(self, batches: int):
        self.batches = batches
        self.total = 0

    def start(self, total_rows: int) -> None:
        self.total = total_rows

    def advance(self, rows: int) -> None:
        self.batches -= 1
        if self.batches == 0:
            raise Interrupt


async def test_sqlite_to_postgresql_and_back_compares_equal(
    sqlite_store_url: str, pg_store_url: str, tmp_path: Path
) -> None:
    await fill(sqlite_store_url, 40)
    there = await copy_store(sqlite_store_url, pg_store_url, batch_size=7)
    assert there.matches and not there.merged and {t.table for t in there.tables} == set(TABLES)
    assert all(t.source_rows > 0 for t in there.tables)
    back_url = default_store_url(tmp_path / "back")  # does not exist yet: created and migrated
    back = await copy_store(pg_store_url, back_url, batch_size=7)
    assert back.matches
    assert [t.source_checksum for t in back.tables] == [t.source_checksum for t in there.tables]
    assert await dump(back_url) == await dump(sqlite_store_url)


async def test_postgresql_serial_ids_continue_after_the_copy(sqlite_store_url: str, pg_store_url: str) -> None:
    await fill(sqlite_store_url, 5)
    await copy_store(sqlite_store_url, pg_store_url)
    engine = await open_store(pg_store_url)
    try:
        async with engine.begin() as conn:
            new_id = (
                await conn.execute(
                    ProvidedKeyRow.__table__.insert()
                    .values(cid="new", multihash=b"new", kad_key=b"k", added_at=0, next_due_at=0)
                    .returning(ProvidedKeyRow.id)
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert new_id == 6


@pytest.mark.parametrize("to", ["sqlite", "postgresql"])
async def test_an_interrupted_copy_resumes_without_duplicates(
    sqlite_store_url: str, request: pytest.FixtureRequest, tmp_path: Path, to: str
) -> None:
    target = default_store_url(tmp_path / "target") if to == "sqlite" else request.getfixturevalue("pg_store_url")
    await fill(sqlite_store_url, 30)
    stop = StopAfter(batches=4)
    with pytest.raises(Interrupt):
        await copy_store(sqlite_store_url, target, batch_size=10, progress=stop)
    partial = await dump(target)
    assert 0 < sum(map(len, partial.values())) < stop.total + 1
    assert any(row[0] == COPY_MARKER for row in partial["provider_state"])

    report = await copy_store(sqlite_store_url, target, batch_size=10)  # same command again, no --merge
    assert report.resumed and report.matches
    assert await dump(target) == await dump(sqlite_store_url)


async def test_a_target_with_data_is_refused_unless_merge(sqlite_store_url: str, tmp_path: Path) -> None:
    await fill(sqlite_store_url, 3)
    target = default_store_url(tmp_path / "target")
    await copy_store(sqlite_store_url, target)  # now it holds data
    other = default_store_url(tmp_path / "other")
    await copy_store(sqlite_store_url, other)
    engine = await open_store(other)
    try:
        async with engine.begin() as conn:
            await conn.execute(ProviderStateRow.__table__.insert().values(name="only-in-other", value="1", updated_at=1))
            await conn.execute(text("UPDATE provider_state SET value = 'changed' WHERE name = 'alpha'"))
    finally:
        await engine.dispose()

    with pytest.raises(CopyError, match="already holds data"):
        await copy_store(other, target)
    before = await dump(target)
    assert before == await dump(sqlite_store_url)  # the refusal wrote nothing

    report = await copy_store(other, target, merge=True)
    assert report.merged
    after = await dump(target)
    assert ("only-in-other", "1", 1) in after["provider_state"]
    assert ("alpha", "x", 0) in after["provider_state"]  # the target's row is kept
    assert sum(map(len, after.values())) == sum(map(len, before.values())) + 1


async def test_refusals(sqlite_store_url: str, tmp_path: Path) -> None:
    with pytest.raises(CopyError, match="same store"):
        await copy_store(sqlite_store_url, sqlite_store_url)
    with pytest.raises(StoreError, match="no store"):
        await copy_store(default_store_url(tmp_path / "missing"), sqlite_store_url)

    newer = default_store_url(tmp_path / "newer")
    await copy_store(sqlite_store_url, newer)
    engine = await open_store(newer)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match="f00d.*newer"):
        await copy_store(sqlite_store_url, newer)

