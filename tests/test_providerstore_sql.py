"""The SQL provider store's own promises: group commit, durability across kill -9, a
second process writing the same SQLite file, a cache that never shows stale sets."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable

import anyio
import pytest
from sqlalchemy import select, text

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine
from dhtstore.data.models import PeerRow, ProviderRecordRow
from dhtstore.errors import StoreError
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.peerid import PeerId
from dhtstore.providerstore.sql import SqlProviderStore, open_provider_store

pytestmark = pytest.mark.anyio

ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
CountRecords = Callable[[str], Awaitable[int]]  # the count_provider_records fixture
_PEERS = [PrivateKey.generate().peer_id() for _ in range(8)]


def mh(i: int) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(str(i).encode()).digest()).to_bytes()


def peer(i: int) -> PeerId:
    return _PEERS[i]


async def test_concurrent_adds_share_transactions(store_url: str, count_provider_records: CountRecords) -> None:
    async with open_provider_store(store_url) as store:
        async with anyio.create_task_group() as tg:
            for i in range(600):
                tg.start_soon(store.add_provider, mh(i), peer(i % 8), (ADDR,))
        assert store.counters["records_written"] == 600
        assert store.counters["transactions"] <= 20
        assert (await store.stats()).records == 600
    assert await count_provider_records(store_url) == 600


async def test_reannounce_while_queued_is_one_row(sqlite_store_url: str, count_provider_records: CountRecords) -> None:
    async with open_provider_store(sqlite_store_url) as store:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(store.add_provider, mh(1), peer(0), (ADDR,))
        assert [r.provider.addrs for r in await store.get_providers(mh(1))] == [(ADDR,)]
    assert await count_provider_records(sqlite_store_url) == 1


async def test_reads_never_cache_a_stale_set(store_url: str) -> None:
    async with open_provider_store(store_url, cache_size=4) as store:
        await store.add_provider(mh(0), peer(0))

        async def reader() -> None:
            for _ in range(30):
                await store.get_providers(mh(0))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(reader)
            for p in range(1, 8):
                tg.start_soon(store.add_provider, mh(0), peer(p))
        assert {r.provider.peer_id for r in await store.get_providers(mh(0))} == {peer(p) for p in range(8)}


async def test_a_repeated_read_is_answered_from_the_cache_and_counted(store_url: str) -> None:
    async with open_provider_store(store_url, cache_size=4) as store:
        await store.add_provider(mh(0), peer(0), (ADDR,))
        first = await store.get_providers(mh(0))
        assert store.counters["cache_hits"] == 0  # the first read queried the store
        assert await store.get_providers(mh(0)) == first
        assert store.counters["cache_hits"] == 1
        for i in range(1, 6):  # five other keys push it out of a cache of four
            await store.add_provider(mh(i), peer(0))
            await store.get_providers(mh(i))
        hits = store.counters["cache_hits"]
        assert await store.get_providers(mh(0)) == first
        assert store.counters["cache_hits"] == hits


async def test_cached_addresses_follow_new_announcements(sqlite_store_url: str) -> None:
    other = bytes.fromhex("047f000002060fa2")
    async with open_provider_store(sqlite_store_url) as store:
        await store.add_provider(mh(1), peer(0), (ADDR,))
        assert (await store.get_providers(mh(1)))[0].provider.addrs == (ADDR,)
        await store.add_provider(mh(2), peer(0), (other,))  # same peer, new addresses
        assert (await store.get_providers(mh(1)))[0].provider.addrs == (other,)


async def test_leaving_commits_queued_records_and_refuses_later_adds(
    sqlite_store_url: str, count_provider_records: CountRecords,
) -> None:
    engine = make_engine(sqlite_store_url)
    results: list[str] = []
    try:
        store = SqlProviderStore(engine)
        async with store:

            async def add(i: int) -> None:
                await store.add_provider(mh(i), peer(0))
                results.append("ok")

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(add, i)
                await anyio.sleep(0)  # all queued, none committed yet
        assert results == ["ok"] * 20
        with pytest.raises(StoreError, match="not running"):
            await store.add_provider(mh(99), peer(0))
    finally:
        await engine.dispose()
    assert await count_provider_records(sqlite_store_url) == 20


async def test_peer_text_columns_are_base58(sqlite_store_url: str) -> None:
    async with open_provider_store(sqlite_store_url) as store:
        await store.add_provider(mh(1), peer(0))
    engine = make_engine(sqlite_store_url)
    async with engine.connect() as conn:
        text_id = (await conn.execute(select(PeerRow.peer_id_text))).scalar_one()
        key_b58 = (await conn.execute(select(ProviderRecordRow.key_b58))).scalar_one()
    await engine.dispose()
    assert text_id == peer(0).to_base58()
    assert key_b58.startswith("Qm")  # sha2-256 multihash in base58btc = the CIDv0 form


async def test_peers_rows_keep_addresses_an_announcement_without_them_does_not_carry(
    store_url: str,
) -> None:
    """The peers upsert on both stores (one statement from arrays on PostgreSQL): a record
    with addresses sets them, one without later only refreshes last_seen_at, and one
    batch mixing both kinds writes each peer once with the right columns."""
    now = [1_800_000_000.0]
    async with open_provider_store(store_url, clock=lambda: now[0]) as store:
        await store.add_provider(mh(1), peer(0), (ADDR,))
        now[0] += 120  # past PEER_REFRESH: the row is written again
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.add_provider, mh(2), peer(0))  # no addresses: keeps ADDR
            tg.start_soon(store.add_provider, mh(3), peer(1))  # new peer, no addresses
            tg.start_soon(store.add_provider, mh(4), peer(2), (ADDR,))
            tg.start_soon(store.add_provider, mh(5), peer(2))  # same batch: the addresses win
    engine = make_engine(store_url)
    async with engine.connect() as conn:
        rows = {bytes(r.peer_id): r for r in (await conn.execute(select(PeerRow))).all()}
        records = (await conn.execute(select(ProviderRecordRow.key_mh, ProviderRecordRow.key_b58))).all()
    await engine.dispose()
    t = 1_800_000_120
    assert {k: (r.addrs, r.addrs_expire_at, r.first_seen_at, r.last_seen_at, r.peer_id_text) for k, r in rows.items()} == {
        peer(0).to_bytes(): (b"\x08" + ADDR, t - 120 + 86400, t - 120, t, peer(0).to_base58()),
        peer(1).to_bytes(): (b"", 0, t, t, peer(1).to_base58()),
        peer(2).to_bytes(): (b"\x08" + ADDR, t + 86400, t, t, peer(2).to_base58()),
    }
    assert len(records) == 5 and all(b58.startswith("Qm") for _, b58 in records)


async def test_the_writer_replaces_a_connection_that_died_while_idle(pg_store_url: str) -> None:
    """The PostgreSQL writer keeps its connection between batches; a server that dropped it
    (a restart) costs the next batch one immediate retry, not an outage."""
    async with open_provider_store(pg_store_url) as store:
        await store.add_provider(mh(1), peer(0), (ADDR,))
        engine = make_engine(pg_store_url)
        async with engine.connect() as conn:
            await conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ))
        await engine.dispose()
        await store.add_provider(mh(2), peer(0), (ADDR,))
        assert store.available
        assert (store.counters["write_retries"], store.counters["write_errors"], store.counters["store_down"]) == (0, 0, 0)
        assert len(await store.get_providers(mh(2))) == 1


WRITER = textwrap.dedent(
    """
    import hashlib, sys, anyio
    from dhtstore.crypto.keys import PrivateKey
    from dhtstore.multihash import SHA2_256, Multihash
    from dhtstore.providerstore.sql import open_provider_store

    def mh(i):
        return Multihash(SHA2_256, hashlib.sha256(str(i).encode()).digest()).to_bytes()

    PEERS = [PrivateKey.generate().peer_id() for _ in range(8)]

    async def main(url, first, n):
        async with open_provider_store(url) as store:
            async with anyio.create_task_group() as tg:
                for i in range(first, first + n):
                    tg.start_soon(store.add_provider, mh(i), PEERS[i % 8])
            print("committed", flush=True)
            await anyio.sleep(3600)  # killed here

    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    """
)


def _start_writer(url: str, first: int, n: int) -> subprocess.Popen[str]:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(first), str(n)], cwd=repo, stdout=subprocess.PIPE, text=True
    )


async def test_records_survive_kill_9_and_a_second_process_writes_alongside(
    sqlite_store_url: str, count_provider_records: CountRecords,
) -> None:
    child = _start_writer(sqlite_store_url, 0, 300)
    try:
        async with open_provider_store(sqlite_store_url) as store:  # this process writes at the same time
            async with anyio.create_task_group() as tg:
                for i in range(1000, 1300):
                    tg.start_soon(store.add_provider, mh(i), peer(i % 8))
        assert child.stdout is not None
        line = await anyio.to_thread.run_sync(child.stdout.readline)
        assert line.strip() == "committed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert await count_provider_records(sqlite_store_url) == 600


async def test_a_failed_transaction_fails_its_callers_and_the_store_carries_on(
    sqlite_store_url: str, count_provider_records: CountRecords,
) -> None:
    async with open_provider_store(sqlite_store_url) as store:
        await store.add_provider(mh(1), peer(0))
        engine = make_engine(sqlite_store_url)
        async with engine.begin() as conn:  # another writer breaks the table under us
            await conn.execute(text("ALTER TABLE provider_records RENAME TO provider_records_away"))
        with pytest.raises(StoreError, match="not stored"):
            await store.add_provider(mh(2), peer(0))
        assert store.counters["write_errors"] == 1
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE provider_records_away RENAME TO provider_records"))
        await engine.dispose()
        await store.add_provider(mh(3), peer(0))
        with pytest.raises(ValueError):
            await store.add_provider(b"junk", peer(0))
        assert store.counters["rejected"] == 1
    assert await count_provider_records(sqlite_store_url) == 2


async def test_sweep_deletes_in_batches_until_nothing_expired_is_left(
    store_url: str, count_provider_records: CountRecords,
) -> None:
    now = [1_800_000_000.0]
    async with open_provider_store(store_url, clock=lambda: now[0], sweep_batch=3) as store:
        for i in range(10):
            await store.add_provider(mh(i), peer(i % 8))
        now[0] += 49 * 3600
        await store.add_provider(mh(99), peer(0))
        assert await store.sweep_expired() == 10
        assert store.counters["swept"] == 10
    assert await count_provider_records(store_url) == 1
