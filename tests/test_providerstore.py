"""Provider store semantics, the same for the in-memory store and the SQL store on
SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine
from dhtstore.data.fastread import open_reader
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.peerid import PeerId
from dhtstore.providerstore.api import ProviderStore
from dhtstore.providerstore.memory import MemoryProviderStore
from dhtstore.providerstore.sql import SqlProviderStore

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000
HOUR = 3600


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def mh(i: int) -> bytes:
    return Multihash(SHA2_256, hashlib.sha256(str(i).encode()).digest()).to_bytes()


def peer(i: int) -> PeerId:
    return _PEERS[i]


_PEERS = [PrivateKey.generate().peer_id() for _ in range(8)]
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "sqlite-reader", "postgresql", "postgresql-reader"])
async def store(request: pytest.FixtureRequest, clock: Clock, anyio_backend: str) -> AsyncIterator[ProviderStore]:
    """Each implementation; "-reader" reads through ``data.fastread``, as a node does."""
    if request.param == "memory":
        yield MemoryProviderStore(clock=clock)
        return
    backend, _, reads = request.param.partition("-")
    engine = make_engine(request.getfixturevalue(f"{'pg' if backend == 'postgresql' else 'sqlite'}_store_url"))
    try:
        async with open_reader(engine) as reader, SqlProviderStore(engine, clock=clock, reader=reader if reads else None) as s:
            yield s
    finally:
        await engine.dispose()


async def test_is_a_provider_store(store: ProviderStore) -> None:
    assert isinstance(store, ProviderStore)


async def test_add_then_get_with_addresses(store: ProviderStore) -> None:
    await store.add_provider(mh(1), peer(0), (ADDR,))
    await store.add_provider(mh(1), peer(1))
    got = {r.provider.peer_id: r for r in await store.get_providers(mh(1))}
    assert set(got) == {peer(0), peer(1)}
    assert got[peer(0)].provider.addrs == (ADDR,)
    assert got[peer(1)].provider.addrs == ()
    assert got[peer(0)].key == mh(1)
    assert got[peer(0)].expires_at - got[peer(0)].received_at == timedelta(hours=48)
    assert await store.get_providers(mh(2)) == []


async def test_reannounce_refreshes_and_does_not_duplicate(store: ProviderStore, clock: Clock) -> None:
    await store.add_provider(mh(1), peer(0), (ADDR,))
    clock.advance(40 * HOUR)
    await store.add_provider(mh(1), peer(0))
    clock.advance(40 * HOUR)  # 80 h after the first, 40 h after the refresh
    (record,) = await store.get_providers(mh(1))
    assert record.received_at.timestamp() == T0 + 40 * HOUR
    assert record.provider.addrs == ()  # addresses live 24 h; the refresh carried none
    assert (await store.stats()).records == 1


async def test_records_expire_after_48h_and_addresses_after_24h(store: ProviderStore, clock: Clock) -> None:
    await store.add_provider(mh(1), peer(0), (ADDR,))
    await store.get_providers(mh(1))  # warm the SQL store's cache: expiry must apply to it too
    clock.advance(25 * HOUR)
    (record,) = await store.get_providers(mh(1))
    assert record.provider.addrs == ()
    clock.advance(23 * HOUR)
    assert await store.get_providers(mh(1)) == []
    assert (await store.stats()).records == 0


async def test_sweep_deletes_only_expired(store: ProviderStore, clock: Clock) -> None:
    for i in range(5):
        await store.add_provider(mh(i), peer(0))
    clock.advance(47 * HOUR)
    await store.add_provider(mh(1), peer(1))
    clock.advance(2 * HOUR)
    assert await store.sweep_expired() == 5
    assert await store.sweep_expired() == 0
    assert [r.provider.peer_id for r in await store.get_providers(mh(1))] == [peer(1)]


async def test_ttl_shortens_lifetime(store: ProviderStore, clock: Clock) -> None:
    await store.add_provider(mh(1), peer(0), ttl=timedelta(minutes=30))
    clock.advance(31 * 60)
    assert await store.get_providers(mh(1)) == []


async def test_limit_and_stats(store: ProviderStore, clock: Clock) -> None:
    for p in range(6):
        await store.add_provider(mh(1), peer(p))
    await store.add_provider(mh(2), peer(0), ttl=timedelta(minutes=30))
    assert len(await store.get_providers(mh(1), limit=4)) == 4
    assert await store.get_providers(mh(1), limit=0) == await store.get_providers(mh(1), limit=-1) == []
    stats = await store.stats()
    assert (stats.records, stats.keys, stats.providers, stats.expiring_within_hour) == (7, 2, 6, 1)


BAD_KEYS = [
    (b"", "empty"),
    (b"\x12\x20" + b"x" * 31, "digest"),  # header says 32 bytes, 31 follow
    (b"\x12\x4f" + b"x" * 79, "limit is 80"),  # 81 bytes
    ("QmNotBytes", "bytes"),
]


@pytest.mark.parametrize("key, problem", BAD_KEYS)
async def test_bad_key_is_refused(store: ProviderStore, key: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        await store.add_provider(key, peer(0))
    with pytest.raises(ValueError, match=problem):
        await store.get_providers(key)
    assert (await store.stats()).records == 0


@pytest.mark.parametrize(
    "provider, problem",
    [(PeerId(b""), "empty"), (PeerId(b"\x12\x03abc"), "peer id"), ("12D3KooWnotapeerid", "PeerId")],
)
async def test_bad_peer_id_is_refused(store: ProviderStore, provider: PeerId, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        await store.add_provider(mh(1), provider)
    assert (await store.stats()).records == 0


@pytest.mark.parametrize(
    "addrs, problem",
    [((ADDR,) * 33, "limit is 32"), ((b"",), "address of 0 bytes"), ((b"x" * 1025,), "1025 bytes"),
     ((b"x" * 1000,) * 9, "total over")],
)
async def test_bad_addresses_are_refused(store: ProviderStore, addrs: tuple[bytes, ...], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        await store.add_provider(mh(1), peer(0), addrs)
    assert (await store.stats()).records == 0


@pytest.mark.parametrize("ttl", [timedelta(seconds=-1), timedelta(0), timedelta(days=365), 3600])
async def test_bad_ttl_is_refused(store: ProviderStore, ttl: timedelta) -> None:
    with pytest.raises(ValueError, match="(?i)ttl"):
        await store.add_provider(mh(1), peer(0), ttl=ttl)
    assert (await store.stats()).records == 0


async def test_add_providers_stores_all_or_nothing(store: ProviderStore) -> None:
    with anyio.fail_after(5):
        await store.add_providers([])  # nothing to wait for
    await store.add_providers([(mh(1), peer(0), (ADDR,)), (mh(2), peer(0), (ADDR,)), (mh(1), peer(1), ())])
    assert {r.provider.peer_id for r in await store.get_providers(mh(1))} == {peer(0), peer(1)}
    assert [r.provider.addrs for r in await store.get_providers(mh(2))] == [(ADDR,)]
    with pytest.raises(ValueError):  # one key is not a multihash: none of the three is stored
        await store.add_providers([(mh(3), peer(0), ()), (b"\xff\xff", peer(0), ()), (mh(4), peer(0), ())])
    assert await store.get_providers(mh(3)) == [] and await store.get_providers(mh(4)) == []
    # The same record twice in one call is one record.
    await store.add_providers([(mh(5), peer(2), ()), (mh(5), peer(2), (ADDR,))])
    assert [r.provider.peer_id for r in await store.get_providers(mh(5))] == [peer(2)]
