"""Provider-record quotas on SQLite and PostgreSQL (and the in-memory store): providers
per key with re-announcements always taken (ipfs/specs PR #537), records per provider
and in total; counts that survive a restart and follow the sweep; no COUNT on the
ADD_PROVIDER path; the ``v_provider_usage`` and ``v_key_providers`` views."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine
from dhtstore.peerid import PeerId
from dhtstore.providerstore.api import ProviderQuotas, QuotaExceeded
from dhtstore.providerstore.memory import MemoryProviderStore
from dhtstore.providerstore.sql import SqlProviderStore

pytestmark = pytest.mark.anyio

PEERS = [PrivateKey.generate().peer_id() for _ in range(8)]


def mh(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(i.to_bytes(8, "big")).digest()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def sql_store(url: str, quotas: ProviderQuotas, clock: Callable[[], float] = Clock()) -> AsyncIterator[tuple[SqlProviderStore, AsyncEngine]]:
    engine = make_engine(url)
    try:
        async with SqlProviderStore(engine, quotas=quotas, clock=clock) as store:
            yield store, engine
    finally:
        await engine.dispose()


async def refused(store: Any, key: bytes, peer: PeerId, **kw: Any) -> str | None:
    try:
        await store.add_provider(key, peer, **kw)
    except QuotaExceeded as exc:
        return exc.reason
    return None


async def test_a_full_key_refuses_new_providers_but_takes_reannouncements(store_url: str) -> None:
    async with sql_store(store_url, ProviderQuotas(per_key=3)) as (store, _):
        for p in PEERS[:3]:
            assert await refused(store, mh(1), p) is None
        assert await refused(store, mh(1), PEERS[3]) == "key"
        assert await refused(store, mh(1), PEERS[0], ttl=timedelta(hours=1)) is None  # a refresh
        assert {r.provider.peer_id for r in await store.get_providers(mh(1))} == set(PEERS[:3])
        assert await refused(store, mh(2), PEERS[3]) is None  # other keys are not affected
        assert store.counters["quota_refused_key"] == 1


async def test_announcements_in_one_batch_are_counted_against_each_other(store_url: str) -> None:
    async with sql_store(store_url, ProviderQuotas(per_key=3)) as (store, _):
        results: list[str | None] = []

        async def one(p: PeerId) -> None:
            results.append(await refused(store, mh(1), p))

        async with anyio.create_task_group() as tg:  # queued together: one transaction
            for p in PEERS:
                tg.start_soon(one, p)
        assert results.count(None) == 3 and results.count("key") == len(PEERS) - 3
        assert len(await store.get_providers(mh(1))) == 3


async def test_per_provider_and_total_quotas_survive_a_restart(store_url: str) -> None:
    quotas = ProviderQuotas(per_provider=4, total=6)
    async with sql_store(store_url, quotas) as (store, _):
        assert [await refused(store, mh(i), PEERS[0]) for i in range(5)] == [None] * 4 + ["provider"]
        assert await refused(store, mh(0), PEERS[0]) is None  # its own records still refresh
    async with sql_store(store_url, quotas) as (store, _):  # counted again from the rows
        assert await refused(store, mh(9), PEERS[0]) == "provider"
        assert [await refused(store, mh(10 + i), PEERS[1]) for i in range(3)] == [None, None, "total"]


async def test_expired_records_free_their_quota_at_the_sweep(store_url: str) -> None:
    clock = Clock()
    async with sql_store(store_url, ProviderQuotas(per_provider=2), clock) as (store, _):
        for i in range(2):
            await store.add_provider(mh(i), PEERS[0], ttl=timedelta(hours=1))
        assert await refused(store, mh(2), PEERS[0]) == "provider"
        clock.now += 2 * 3600
        assert await store.sweep_expired() == 2
        assert await refused(store, mh(2), PEERS[0]) is None


async def test_the_add_provider_path_runs_no_count(sqlite_store_url: str) -> None:
    """The hot path: one batch of fresh keys costs the write and no other statement
    (the key filter knows the keys are new); a COUNT never runs per announcement."""
    async with sql_store(sqlite_store_url, ProviderQuotas()) as (store, engine):
        await store.add_provider(mh(0), PEERS[0])  # let the key filter build
        with anyio.fail_after(10):
            while store.counters["key_filter_builds"] == 0:
                await anyio.sleep(0.01)
        statements: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        async with anyio.create_task_group() as tg:
            for i in range(1, 200):
                tg.start_soon(store.add_provider, mh(i), PEERS[i % 8])
        assert not [s for s in statements if "count(" in s.lower()]
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(reads) <= store.counters["transactions"]
        await store.add_provider(mh(1), PEERS[1])  # a re-announcement: one read for its batch
        assert not [s for s in statements if "count(" in s.lower()]


async def test_views_show_usage_per_provider_and_per_key(store_url: str) -> None:
    async with sql_store(store_url, ProviderQuotas()) as (store, engine):
        for i in range(3):
            await store.add_provider(mh(i), PEERS[0], (b"\x04\x08\x08\x08\x08\x06\x0f\xa1",))
        await store.add_provider(mh(0), PEERS[1], (b"\x04\x08\x08\x04\x04\x06\x0f\xa1",))
        async with engine.connect() as conn:
            usage = dict((await conn.execute(text("SELECT peer_id, records FROM v_provider_usage"))).all())
            per_key = (await conn.execute(text("SELECT providers FROM v_key_providers ORDER BY providers DESC"))).scalars().all()
        assert usage == {PEERS[0].to_base58(): 3, PEERS[1].to_base58(): 1}
        assert per_key == [2, 1, 1]


async def test_the_memory_store_keeps_the_same_quotas() -> None:
    clock = Clock()
    store = MemoryProviderStore(clock=clock, quotas=ProviderQuotas(per_key=2, per_provider=3, total=5))
    assert [await refused(store, mh(1), p) for p in PEERS[:3]] == [None, None, "key"]
    assert await refused(store, mh(1), PEERS[0]) is None
    assert [await refused(store, mh(10 + i), PEERS[2]) for i in range(4)] == [None, None, None, "provider"]
    assert await refused(store, mh(20), PEERS[3]) == "total"
    clock.now += 3 * 24 * 3600
    assert await store.sweep_expired() == 5
    assert await refused(store, mh(20), PEERS[3]) is None


def test_config_toml_sets_the_quotas() -> None:
    import click

    from dhtstore.cli.run import _provider_quotas
    from dhtstore.config import Config

    assert _provider_quotas(Config()) == ProviderQuotas()
    assert _provider_quotas(Config(extra={"provider_quotas": {"per_key": 50}})) == ProviderQuotas(per_key=50)
    for bad in ({"per_key": 0}, {"per_key": "5"}, {"per_kye": 5}, {"total": True}):
        with pytest.raises(click.ClickException, match="provider_quotas"):
            _provider_quotas(Config(extra={"provider_quotas": bad}))


async def test_revision_0004_adds_the_views_to_a_filled_store_and_drops_them_on_downgrade(empty_url: str) -> None:
    from dhtstore.data.schema import downgrade, upgrade

    engine = make_engine(empty_url)
    try:
        await upgrade(engine, "0003")
        async with engine.begin() as conn:  # a store filled at the previous revision
            for i, p in enumerate(PEERS[:2]):
                await conn.execute(
                    text(
                        "INSERT INTO peers (peer_id, peer_id_text, addrs, addrs_expire_at, protocols, agent,"
                        " first_seen_at, last_seen_at) VALUES (:p, :t, :a, 0, '', '', 0, 0)"
                    ),
                    {"p": p.to_bytes(), "t": p.to_base58(), "a": b""},
                )
                for k in range(i + 1):
                    await conn.execute(
                        text(
                            "INSERT INTO provider_records (key_mh, peer_id, key_b58, received_at, expires_at)"
                            " VALUES (:k, :p, 'Qm', 0, 4000000000)"
                        ),
                        {"k": mh(k), "p": p.to_bytes()},
                    )
        await upgrade(engine)
        async with engine.connect() as conn:
            usage = dict((await conn.execute(text("SELECT peer_id, records FROM v_provider_usage"))).all())
            keys = sorted((await conn.execute(text("SELECT providers FROM v_key_providers"))).scalars().all())
            rows = (await conn.execute(text("SELECT count(*) FROM provider_records"))).scalar_one()
        assert usage == {PEERS[0].to_base58(): 1, PEERS[1].to_base58(): 2} and keys == [1, 2] and rows == 3
        await downgrade(engine, "0003")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM provider_records"))).scalar_one() == 3
            with pytest.raises(Exception, match="v_provider_usage"):
                await conn.execute(text("SELECT * FROM v_provider_usage"))
    finally:
        await downgrade(engine, "base")  # leave the session's PG database empty for the next test
        await engine.dispose()
