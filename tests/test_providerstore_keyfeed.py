"""The key filter on a shared PostgreSQL store (revision 0008's notifications,
``data.keyfeed``): a miss is answered without a query, and a key another
process (or plain SQL) adds is never filtered out for longer than a second, also across
a lost feed connection."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from sqlalchemy import insert, text

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data import keyfeed
from dhtstore.data.engine import make_engine
from dhtstore.data.models import ProviderRecordRow
from dhtstore.errors import StoreError
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.providerstore.keyfilter import KeyFilter
from dhtstore.providerstore.sql import SqlProviderStore, open_provider_store

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

PEER = PrivateKey.generate().peer_id()


def mh(tag: bytes) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(tag).digest()).to_bytes()


@asynccontextmanager
async def built(url: str) -> AsyncIterator[SqlProviderStore]:
    """A shared store whose key filter is built and current."""
    async with open_provider_store(url, shared=True) as store:
        with anyio.fail_after(20):
            while not store.counters["key_filter_builds"] or not await filtered(store, mh(secrets.token_bytes(8))):
                await anyio.sleep(0.05)
        yield store


async def filtered(store: SqlProviderStore, key: bytes) -> bool:
    """Whether a lookup of ``key`` was answered by the filter, with no query."""
    before = store.counters["filtered_misses"]
    await store.get_providers(key)
    return store.counters["filtered_misses"] > before


async def served_within(store: SqlProviderStore, key: bytes, seconds: float) -> float:
    started = time.monotonic()
    with anyio.fail_after(seconds):
        while not await store.get_providers(key):
            await anyio.sleep(0.02)
    return time.monotonic() - started


async def test_misses_skip_the_query_and_another_process_s_key_is_served_within_a_second(pg_store_url: str) -> None:
    async with built(pg_store_url) as here, built(pg_store_url) as there:
        assert all([await filtered(here, mh(b"miss %d" % i)) for i in range(20)])
        key = mh(b"announced to the other process")
        await there.add_provider(key, PEER)
        await served_within(here, key, 1.0)
        assert not await filtered(here, key)


async def test_a_key_written_with_plain_sql_is_served_within_a_second(pg_store_url: str) -> None:
    engine = make_engine(pg_store_url)
    try:
        async with built(pg_store_url) as store:
            keys = [mh(b"plain sql %d" % i) for i in range(100)]  # several payloads of the trigger
            async with engine.begin() as conn:
                await conn.execute(insert(ProviderRecordRow), [
                    {"key_mh": k, "peer_id": PEER.to_bytes(), "key_b58": "x", "received_at": int(time.time()),
                     "expires_at": int(time.time()) + 3600}
                    for k in keys
                ])  # fmt: skip
            await served_within(store, keys[-1], 1.0)
            assert all([await store.get_providers(k) for k in keys])
    finally:
        await engine.dispose()


async def test_a_lost_feed_makes_every_key_maybe_until_it_listens_and_builds_again(
    pg_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyfeed, "RETRY_DELAY", 1.0)
    rebuild = anyio.Event()  # the build after the feed is back waits for it
    first_build = KeyFilter._build

    async def build(self: KeyFilter) -> None:
        if self._listens() > 1:
            await rebuild.wait()
        await first_build(self)

    monkeypatch.setattr(KeyFilter, "_build", build)
    engine = make_engine(pg_store_url)
    try:
        async with built(pg_store_url) as store, built(pg_store_url) as other:
            builds = store.counters["key_filter_builds"]
            async with engine.begin() as conn:  # the feeds' connections die (a network cut, a restart)
                killed = await conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"
                ), {"name": f"{keyfeed.APPLICATION_NAME} {keyfeed.PROVIDER_KEYS}"})  # fmt: skip
            assert len(killed.all()) == 2
            key = mh(b"added while the feeds were lost")
            await other.add_provider(key, PEER)  # its notification reaches no one
            await served_within(store, key, 1.0)  # not filtered out: the feed is not current
            feed = store._key_filter._feed if store._key_filter else None
            assert feed is not None
            with anyio.fail_after(20):
                while not feed.current:
                    await anyio.sleep(0.05)
            # Current again, but the filter from before the loss lacks the key: until the
            # new build, every key is "maybe".
            assert await store.get_providers(key) and not await filtered(store, mh(b"any"))
            rebuild.set()
            with anyio.fail_after(20):  # listening again, and a new build
                while store.counters["key_filter_builds"] == builds or not await filtered(store, mh(secrets.token_bytes(8))):
                    await anyio.sleep(0.05)
            assert store.counters["key_feed_losses"] >= 1
            assert await store.get_providers(key)  # in the new build
            later = mh(b"added after the feed came back")
            await other.add_provider(later, PEER)
            await served_within(store, later, 1.0)
    finally:
        await engine.dispose()


async def test_the_feed_outlives_an_outage_of_the_store_and_the_filter_comes_back(pg_store_url: str) -> None:
    from test_shared_store import outage

    async with built(pg_store_url) as store:
        async with outage(pg_store_url):  # sessions terminated, connections refused
            await anyio.sleep(keyfeed.RETRY_DELAY * 2)  # reconnects fail meanwhile
            with pytest.raises(StoreError):  # the filter no longer answers misses: a query, refused
                await store.get_providers(mh(b"during the outage"))
        with anyio.fail_after(30):
            while not await filtered(store, mh(secrets.token_bytes(8))):
                await anyio.sleep(0.1)
        assert store.counters["key_feed_losses"] == 1  # one outage, counted once however many retries
