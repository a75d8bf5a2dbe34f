"""Several processes over one PostgreSQL provider store (each process is a store with
its own engine here), and a store that goes away under a running store.

The outage is made local to this test's database: it stops accepting connections
(``ALLOW_CONNECTIONS false``) and its backends are terminated (``pg_terminate_backend``),
which is what a restart looks like from the node's side; restarting the shared
PostgreSQL server would break the tests running beside these.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data import keyfeed
from dhtstore.data.engine import make_engine
from dhtstore.errors import StoreError
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.providerstore import health
from dhtstore.providerstore.expiry import SWEEP_LOCK
from dhtstore.providerstore.sql import SqlProviderStore, open_provider_store

pytestmark = pytest.mark.anyio

ADDR = b"\x04\x7f\x00\x00\x01\x06\x0f\xa1"  # /ip4/127.0.0.1/tcp/4001
CountRecords = Callable[[str], Awaitable[int]]  # the count_provider_records fixture


def mh(n: int) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(b"%d" % n).digest()).to_bytes()


PEERS = [PrivateKey.generate().peer_id() for _ in range(4)]


def admin_dsn(url: str) -> tuple[str, str]:
    """A plain DSN of the server's maintenance database, and our database's name."""
    u = make_url(url)
    return f"postgresql://{u.username}@{u.host}:{u.port or 5432}/postgres", u.database or ""


@asynccontextmanager
async def outage(url: str) -> AsyncIterator[None]:
    """The database refuses connections and loses its sessions until the block ends."""
    dsn, name = admin_dsn(url)
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        try:
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


async def test_sqlite_keeps_its_single_process_caches(sqlite_store_url: str) -> None:
    async with open_provider_store(sqlite_store_url) as store:
        assert store.shared is False


async def test_a_record_written_by_one_process_is_served_by_the_others(pg_store_url: str) -> None:
    async with (
        open_provider_store(pg_store_url, shared_cache_ttl=0.2) as a,
        open_provider_store(pg_store_url, shared_cache_ttl=0.2) as b,
    ):
        assert a.shared and b.shared
        await b.add_provider(mh(1), PEERS[0], (ADDR,))
        assert {r.provider.peer_id for r in await b.get_providers(mh(1))} == {PEERS[0]}  # b caches the set
        await a.add_provider(mh(1), PEERS[1], (ADDR,))
        await a.add_provider(mh(2), PEERS[2], (ADDR,))
        with anyio.fail_after(1):  # a new key: as soon as b's key filter hears of it (revision 0008)
            while not (found := await b.get_providers(mh(2))):
                await anyio.sleep(0.01)
        assert {r.provider.peer_id for r in found} == {PEERS[2]}
        await anyio.sleep(0.25)  # b's cached set of mh(1) is past its TTL
        got = await b.get_providers(mh(1))
        assert {r.provider.peer_id for r in got} == {PEERS[0], PEERS[1]}
        assert all(r.provider.addrs == (ADDR,) for r in got)


async def test_a_set_emptied_by_another_process_is_dropped_not_kept_stale(pg_store_url: str) -> None:
    async with (
        open_provider_store(pg_store_url, shared_cache_ttl=0.05) as a,
        open_provider_store(pg_store_url, shared_cache_ttl=0.05) as b,
    ):
        await a.add_provider(mh(1), PEERS[0], (ADDR,))
        with anyio.fail_after(1):  # as soon as b's key filter hears of the key
            while len(await b.get_providers(mh(1))) != 1:
                await anyio.sleep(0.01)
        engine = make_engine(pg_store_url)
        try:
            async with engine.begin() as conn:  # another process's sweep removed it
                await conn.execute(text("DELETE FROM provider_records"))
        finally:
            await engine.dispose()
        await anyio.sleep(0.1)
        assert await b.get_providers(mh(1)) == []
        async with outage(pg_store_url):
            with pytest.raises(StoreError):  # nothing cached: not the old set
                await b.get_providers(mh(1))


async def test_the_sweep_runs_in_one_process_at_a_time(pg_store_url: str, count_provider_records: CountRecords) -> None:
    now = [1_000_000.0]
    async with open_provider_store(pg_store_url, clock=lambda: now[0]) as store:
        for i in range(5):
            await store.add_provider(mh(i), PEERS[0], (ADDR,))
        now[0] += 3 * 24 * 3600  # all expired
        dsn, name = admin_dsn(pg_store_url)
        other = await asyncpg.connect(dsn.rsplit("/", 1)[0] + f"/{name}")  # another process sweeping
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK)
            assert await store.sweep_expired() == 0
            assert store.counters["sweeps_skipped"] == 1 and await count_provider_records(pg_store_url) == 5
            await other.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)
        finally:
            await other.close()
        assert await store.sweep_expired() == 5
        assert await count_provider_records(pg_store_url) == 0
        assert await store.sweep_expired() == 0  # the lock was released after the last sweep


async def test_two_stores_sweeping_at_once_delete_each_record_once(
    pg_store_url: str, count_provider_records: CountRecords,
) -> None:
    now = [1_000_000.0]
    async with (
        open_provider_store(pg_store_url, clock=lambda: now[0], sweep_batch=50) as a,
        open_provider_store(pg_store_url, clock=lambda: now[0], sweep_batch=50) as b,
    ):
        async with anyio.create_task_group() as tg:  # concurrent adds: a few group commits
            for i in range(300):
                tg.start_soon(a.add_provider, mh(i), PEERS[i % 4], (ADDR,))
        written = await count_provider_records(pg_store_url)
        assert written == 300
        now[0] += 3 * 24 * 3600
        results: list[int] = []
        async with anyio.create_task_group() as tg:
            for store in (a, b):
                tg.start_soon(_sweep_into, results, store)
        assert sum(results) == written and await count_provider_records(pg_store_url) == 0


async def _sweep_into(results: list[int], store: SqlProviderStore) -> None:
    results.append(await store.sweep_expired())


async def test_during_an_outage_reads_answer_from_the_cache(pg_store_url: str) -> None:
    async with open_provider_store(pg_store_url, shared_cache_ttl=0.05) as store:
        await store.add_provider(mh(1), PEERS[0], (ADDR,))
        assert len(await store.get_providers(mh(1))) == 1  # cached
        async with outage(pg_store_url):
            await anyio.sleep(0.1)  # the cached set is stale now; the store cannot be asked
            got = await store.get_providers(mh(1))
            assert [r.provider.peer_id for r in got] == [PEERS[0]]
            assert not store.available and store.counters["stale_reads"] == 1
            await anyio.sleep(keyfeed.STALE_AFTER)  # the key filter no longer answers for misses either
            with pytest.raises(StoreError, match="provider store unavailable"):
                await store.get_providers(mh(9))  # nothing cached to answer from


async def test_a_write_in_flight_when_the_store_goes_away_is_retried_until_it_is_back(
    pg_store_url: str, count_provider_records: CountRecords,
) -> None:
    async with open_provider_store(pg_store_url) as store:
        await store.add_provider(mh(1), PEERS[0], (ADDR,))
        done = anyio.Event()

        async def add() -> None:
            await store.add_provider(mh(2), PEERS[1], (ADDR,))
            done.set()

        async with anyio.create_task_group() as tg:
            async with outage(pg_store_url):
                tg.start_soon(add)
                await anyio.sleep(0.6)
                assert not done.is_set() and not store.available and store.counters["write_retries"] >= 1
            with anyio.fail_after(10):
                await done.wait()  # acknowledged only once committed
        assert store.available and store.counters["write_errors"] == 0
        assert await count_provider_records(pg_store_url) == 2


async def test_a_write_that_cannot_be_committed_fails_to_its_caller(
    pg_store_url: str, count_provider_records: CountRecords,
) -> None:
    async with open_provider_store(pg_store_url, retry_delays=(0.05, 0.05)) as store:
        await store.add_provider(mh(1), PEERS[0], (ADDR,))
        async with outage(pg_store_url):
            with pytest.raises(StoreError, match="provider record not stored"):
                await store.add_provider(mh(2), PEERS[1], (ADDR,))
            assert store.counters["write_errors"] == 1
        with anyio.fail_after(10):
            while not store.available:  # the probe notices the store is back
                await anyio.sleep(0.1)
        await store.add_provider(mh(3), PEERS[2], (ADDR,))  # and writes work again, on new connections
        assert await count_provider_records(pg_store_url) == 2


async def test_an_idle_store_notices_an_outage_and_the_return(
    pg_store_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "HEALTH_INTERVAL", 0.2)
    monkeypatch.setattr(health, "PROBE_INTERVAL", 0.1)
    async with open_provider_store(pg_store_url) as store:
        async with outage(pg_store_url):
            with anyio.fail_after(10):
                while store.available:
                    await anyio.sleep(0.05)
        with anyio.fail_after(10):
            while not store.available:
                await anyio.sleep(0.05)
        assert store.counters["store_down"] == 1


async def test_the_node_reports_the_store_down_and_back(
    pg_store_url: str, count_provider_records: CountRecords,
) -> None:
    from prometheus_client import generate_latest

    from dhtstore.cli.run import _format_status
    from dhtstore.node import Node, NodeOptions

    options = NodeOptions(identity=PrivateKey.generate(), store_url=pg_store_url, listen=["/ip4/127.0.0.1/tcp/0"], reprovide=False)
    async with Node.start(options) as node:
        assert node.store_state() == "up"
        async with outage(pg_store_url):
            await anyio.sleep(keyfeed.STALE_AFTER)  # the key filter no longer answers for misses
            with pytest.raises(StoreError):
                await node.providers.get_providers(mh(5))
            assert "store=down" in _format_status(node.status())
            assert "dhtstore_store_up{" in (scraped := generate_latest(node.metrics.registry).decode())
            assert [line for line in scraped.splitlines() if line.startswith("dhtstore_store_up{")][0].endswith(" 0.0")
        with anyio.fail_after(10):
            while node.store_state() != "up":
                await anyio.sleep(0.1)
        await node.providers.add_provider(mh(5), PEERS[0], (ADDR,))
    assert await count_provider_records(pg_store_url) == 1
