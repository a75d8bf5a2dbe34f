"""Claims on slices of the keyspace (``provider.claims``), on SQLite, PostgreSQL and in
memory (``provider.memory``, which the simulation uses): two owners never hold
overlapping live claims, a lapsed claim is taken over, and the provide list's "due and
unclaimed" queries skip other owners' slices."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import anyio
import pytest

from dhtstore.data.engine import make_engine
from dhtstore.kadkey import Key
from dhtstore.multihash import SHA2_256, Multihash, cid_string
from dhtstore.provider.api import ClaimStore, ProvideList
from dhtstore.provider.claims import SqlClaimStore
from dhtstore.provider.keyspace import Prefix
from dhtstore.provider.memory import MemoryClaimStore, MemoryProvideList
from dhtstore.provider.providelist import ProvideListStore

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000
LEASE = 60


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ProvideList, ClaimStore]]:
    """A provide list and its claims: in SQL (SQLite, PostgreSQL) or in memory."""
    if request.param == "memory":
        claims = MemoryClaimStore()
        yield MemoryProvideList(claims), claims
        return
    engine = make_engine(request.getfixturevalue("sqlite_store_url" if request.param == "sqlite" else "pg_store_url"))
    try:
        yield ProvideListStore(engine), SqlClaimStore(engine)
    finally:
        await engine.dispose()


async def test_overlapping_claims_of_two_owners_exclude_each_other(stores: tuple[ProvideList, ClaimStore]) -> None:
    _, claims = stores
    assert await claims.claim(Prefix.parse("01"), "a", NOW, LEASE)
    assert not await claims.claim(Prefix.parse("0"), "b", NOW, LEASE), "covers a's slice"
    assert not await claims.claim(Prefix.parse("011"), "b", NOW, LEASE), "inside a's slice"
    assert await claims.claim(Prefix.parse("00"), "b", NOW, LEASE), "beside it"
    live = await claims.live(NOW)
    assert [(str(c.prefix), c.owner) for c in live] == [("00*", "b"), ("01*", "a")]
    await claims.release(Prefix.parse("01"), "a")
    assert await claims.claim(Prefix.parse("01"), "b", NOW, LEASE), "released: free for anyone"


async def test_a_lapsed_claim_is_taken_over_and_its_owner_finds_out(stores: tuple[ProvideList, ClaimStore]) -> None:
    _, claims = stores
    assert await claims.claim(Prefix.parse("*"), "a", NOW, LEASE)
    assert await claims.renew(Prefix.parse("*"), "a", NOW + LEASE - 1, LEASE), "renewed in time"
    later = NOW + 2 * LEASE
    assert not await claims.claim(Prefix.parse("1"), "b", later - 2, LEASE), "still live"
    assert await claims.claim(Prefix.parse("1"), "b", later, LEASE), "lapsed: taken over"
    assert not await claims.renew(Prefix.parse("*"), "a", later + 1, LEASE), "a learns it lost the claim"
    assert [c.owner for c in await claims.live(later)] == ["b"]


async def test_an_owner_replaces_its_own_overlapping_claims(stores: tuple[ProvideList, ClaimStore]) -> None:
    """A restarted process (same identity) finds its killed run's claim and may claim over it."""
    _, claims = stores
    assert await claims.claim(Prefix.parse("10"), "a", NOW, LEASE)
    assert await claims.claim(Prefix.parse("1"), "a", NOW + 1, LEASE)
    assert [str(c.prefix) for c in await claims.live(NOW + 1)] == ["1*"]


async def test_concurrent_claimers_never_both_win(stores: tuple[ProvideList, ClaimStore]) -> None:
    _, claims = stores
    winners: list[str] = []

    async def try_claim(owner: str, prefix: str) -> None:
        if await claims.claim(Prefix.parse(prefix), owner, NOW, LEASE):
            winners.append(owner)

    async with anyio.create_task_group() as tg:
        for i, prefix in enumerate(["*", "0", "1", "01", "10", "*", "11"]):
            tg.start_soon(try_claim, f"owner{i}", prefix)
    live = [c.prefix for c in await claims.live(NOW)]
    assert len(live) == len(winners) >= 1
    assert all(not a.covers(b) for a in live for b in live if a is not b), "no two live claims overlap"


async def test_due_queries_skip_other_owners_live_claims(stores: tuple[ProvideList, ClaimStore]) -> None:
    store, claims = stores
    mhs = [Multihash(SHA2_256, hashlib.sha256(b"claim %d" % i).digest()).to_bytes() for i in range(64)]
    await store.add([(cid_string(mh), mh) for mh in mhs], NOW - 10)
    assert await claims.claim(Prefix.parse("0"), "a", NOW, LEASE)
    oldest = await store.oldest_due(NOW, "b")
    assert oldest is not None
    kad, _ = oldest
    assert Prefix.parse("1").contains(kad), "b is given keys outside a's slice"
    assert await store.next_due_for("b", NOW) == NOW - 10
    assert await store.due_under(Prefix.parse("0"), NOW, "b") is None, "all of 0 is a's"
    first_of_1 = min(k for k in (Key.for_multihash(mh).value for mh in mhs) if Prefix.parse("1").contains(k))
    assert await store.due_under(Prefix.parse("1"), NOW, "b") == first_of_1
    assert await store.due_under(Prefix.parse("1"), NOW - 11, "b") is None, "not due yet"
    assert await claims.claim(Prefix.parse("1"), "c", NOW, LEASE)
    assert await store.oldest_due(NOW, "b") is None and await store.next_due_for("b", NOW) is None
    assert (await store.oldest_due(NOW, "a")) is not None, "a still sees its own slice"
    assert await store.oldest_due(NOW + LEASE, "b") is not None, "claims lapsed: everything is b's to take"
    assert await store.count_due(Prefix.parse("*"), NOW, 10) == 10
    assert await store.count_due(Prefix.parse("*"), NOW, 1000) == 64
