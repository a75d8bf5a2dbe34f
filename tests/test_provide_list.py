"""The provide list, in SQL (SQLite, PostgreSQL) and in memory (``provider.memory``, which
the simulation uses): entries keyed by multihash, states, paging, schedule state; and
a store that does not answer raises ``StoreUnavailable``."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from cid import make_cid  # type: ignore[import-untyped]  # py-cid ships no type information

from dhtstore.data.engine import make_engine
from dhtstore.data.schema import open_store
from dhtstore.errors import StoreUnavailable
from dhtstore.multihash import cid_string
from dhtstore.provider.api import AddResult, KeyState, ProvideError, RegionRow
from dhtstore.provider.cids import multihash_of
from dhtstore.provider.claims import SqlClaimStore
from dhtstore.provider.keyspace import Prefix
from dhtstore.provider.memory import MemoryClaimStore, MemoryProvideList
from dhtstore.provider.providelist import ProvideListStore
from dhtstore.provider.service import ProvideListService

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000


def mh(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"key%d" % i).digest()


class Clock:
    def __init__(self, t: float = NOW):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[ProvideListService]:
    if request.param == "memory":
        claims = MemoryClaimStore()
        yield ProvideListService(MemoryProvideList(claims), claims, interval=3600, clock=Clock())
        return
    engine = await open_store(request.getfixturevalue("sqlite_store_url" if request.param == "sqlite" else "pg_store_url"))
    try:
        yield ProvideListService(ProvideListStore(engine), SqlClaimStore(engine), interval=3600, clock=Clock())
    finally:
        await engine.dispose()


async def test_an_unreachable_store_raises_store_unavailable() -> None:
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    store, claims = ProvideListStore(engine), SqlClaimStore(engine)
    try:
        with pytest.raises(StoreUnavailable):
            await store.contains(mh(1))
        with pytest.raises(StoreUnavailable):
            await store.mark_provided([mh(1)], NOW, NOW + 1)
        with pytest.raises(StoreUnavailable):
            [row async for row in store.rows()]
        with pytest.raises(StoreUnavailable):
            await claims.claim(Prefix.parse("0"), "a", NOW, 60)
        with pytest.raises(StoreUnavailable):
            await claims.live(NOW)
    finally:
        await engine.dispose()


def test_cid_forms_name_one_multihash() -> None:
    m = mh(1)
    v0 = make_cid(0, "dag-pb", m).encode().decode()
    v1 = cid_string(m)
    v1_dagpb = make_cid(1, "dag-pb", m).encode("base32").decode()
    v1_b58 = make_cid(1, "raw", m).encode("base58btc").decode()
    assert {multihash_of(c) for c in (v0, v1, v1_dagpb, v1_b58)} == {m}
    assert multihash_of(make_cid(1, "raw", m).buffer) == m


@pytest.mark.parametrize(
    "bad",
    ["", "hello", "bafy", "Qm" + "1" * 44, "b" + "a" * 7, "bafkreig644diihbllthin2r4swp3fwhe3muidsagrama2nfcj66b5uumb"],
)
def test_malformed_cids_are_refused(bad: str) -> None:
    with pytest.raises(ProvideError):
        multihash_of(bad)


def test_multihash_over_80_bytes_is_refused() -> None:
    long = b"\x00\x4f" + b"a" * 79  # identity multihash, 81 bytes
    with pytest.raises(ProvideError, match="80"):
        multihash_of(cid_string(long))
    ok = b"\x00\x4e" + b"a" * 78  # 80 bytes: the limit itself is fine
    assert multihash_of(cid_string(ok)) == ok


async def test_add_is_keyed_by_multihash(service: ProvideListService) -> None:
    m = mh(1)
    v0 = make_cid(0, "dag-pb", m).encode().decode()
    result = await service.start_provide([v0, cid_string(m), cid_string(mh(2))])
    assert result == AddResult(added=2, present=1)
    assert await service.start_provide([cid_string(m)]) == AddResult(added=0, present=1)
    entries = [e async for e in service.provide_list()]
    assert sorted(e.multihash for e in entries) == sorted([m, mh(2)])
    first = next(e for e in entries if e.multihash == m)
    assert first.cid == v0  # the CID as first given is kept
    assert first.state is KeyState.PENDING and first.attempts == 0 and first.last_provided_at is None


async def test_add_counts_across_statements_and_the_counters_follow(
    service: ProvideListService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Statements of 4 rows (SQLite: an executemany whose rowcount is the rows added):
    # present keys, a repeat within the call, and statements with nothing new.
    monkeypatch.setattr("dhtstore.provider.providelist.WRITE_BATCH", 4)
    await service.start_provide([cid_string(mh(i)) for i in range(0, 20, 3)])  # 7 keys
    result = await service.start_provide([cid_string(mh(i)) for i in [*range(20), 5, 6]])
    assert result == AddResult(added=13, present=9)
    assert {e.multihash async for e in service.provide_list()} == {mh(i) for i in range(20)}
    status = await service.status()
    assert status.keys == 20 and status.pending == 20


async def test_a_bad_cid_writes_nothing(service: ProvideListService) -> None:
    with pytest.raises(ProvideError):
        await service.start_provide([cid_string(mh(1)), "nonsense"])
    assert [e async for e in service.provide_list()] == []


async def test_stop_provide_removes(service: ProvideListService) -> None:
    await service.start_provide([cid_string(mh(i)) for i in range(5)])
    assert await service.stop_provide([cid_string(mh(1)), cid_string(mh(3)), cid_string(mh(99))]) == 2
    assert {e.multihash async for e in service.provide_list()} == {mh(0), mh(2), mh(4)}


async def test_list_pages_in_multihash_order(service: ProvideListService) -> None:
    await service.start_provide([cid_string(mh(i)) for i in range(2500)])
    everything = [e.multihash async for e in service.provide_list()]
    assert everything == sorted(mh(i) for i in range(2500))
    page = [e.multihash async for e in service.provide_list(limit=1200)]
    rest = [e.multihash async for e in service.provide_list(after=page[-1])]
    assert page + rest == everything


async def test_states_and_status(service: ProvideListService) -> None:
    store = service.store
    clock = service.clock
    await service.start_provide([cid_string(mh(i)) for i in range(4)])
    await store.mark_provided([mh(0)], NOW, NOW + 1800)
    await store.mark_provided([mh(1)], NOW, NOW + 10)
    for _ in range(3):
        await store.mark_failed([mh(2)], "reached 0 of 20 peers", NOW + 60)
    clock.t = NOW + 100  # type: ignore[attr-defined]
    states = {e.multihash: e for e in [e async for e in service.provide_list()]}
    assert states[mh(0)].state is KeyState.PROVIDED
    assert states[mh(1)].state is KeyState.OVERDUE
    assert states[mh(2)].state is KeyState.FAILING and states[mh(2)].attempts == 3
    assert states[mh(2)].last_error == "reached 0 of 20 peers"
    assert states[mh(3)].state is KeyState.PENDING
    status = await service.status()
    assert (status.keys, status.pending, status.provided_within_interval, status.failing) == (4, 2, 2, 1)
    assert status.overdue == 3  # mh(1), mh(2) (retry time passed) and the pending mh(3)
    assert not status.falling_behind  # the oldest due work is 100 s late, under interval/22
    clock.t = NOW + 3600  # type: ignore[attr-defined]
    assert (await service.status()).falling_behind


async def test_due_keys_and_regions(service: ProvideListService) -> None:
    store = service.store
    await service.start_provide([cid_string(mh(i)) for i in range(200)])
    region = Prefix.parse("01")
    due = await store.due_keys(region, NOW + 1)
    assert due and all(region.contains(k.kad) for k in due)
    assert [k.kad for k in due] == sorted(k.kad for k in due)
    assert len(due) == sum(1 for i in range(200) if region.contains(int.from_bytes(hashlib.sha256(mh(i)).digest(), "big")))
    await store.mark_provided([k.multihash for k in due], NOW, NOW + 500)
    assert await store.due_keys(region, NOW + 500) == []
    assert len(await store.due_keys(region, NOW + 501)) == len(due)

    rows = [RegionRow(Prefix.parse("010"), NOW + 5, None, 0, None), RegionRow(Prefix.parse("011"), NOW + 9, NOW, 1, "x")]
    await store.replace_regions(region, rows)
    assert sorted(await store.regions(), key=lambda g: g.prefix) == rows
    await store.replace_regions(region, [RegionRow(region, NOW, NOW, 0, None)])
    assert [g.prefix for g in await store.regions()] == [region]

    await store.set_state({"a": "1", "b": "2"}, NOW)
    await store.set_state({"a": "3"}, NOW)
    assert await store.get_state() == {"a": "3", "b": "2"}
