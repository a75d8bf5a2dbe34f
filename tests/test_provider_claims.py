"""Claims on slices of the keyspace (``provider.claims``), on SQLite and PostgreSQL: two
owners never hold overlapping live claims, a lapsed claim is taken over, and the
provide list's "due and unclaimed" queries skip other owners' slices."""

from __future__ import annotations

import hashlib

import anyio
import pytest

from dhtstore.data.engine import make_engine
from dhtstore.multihash import SHA2_256, Multihash, cid_string
from dhtstore.provider.claims import ClaimStore
from dhtstore.provider.keyspace import Prefix
from dhtstore.provider.providelist import ProvideListStore

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000
LEASE = 60


@pytest.fixture
async def engine(store_url):
    engine = make_engine(store_url)
    yield engine
    await engine.dispose()


async def test_overlapping_claims_of_two_owners_exclude_each_other(engine) -> None:
    claims = ClaimStore(engine)
    assert await claims.claim(Prefix.parse("01"), "a", NOW, LEASE)
    assert not await claims.claim(Prefix.parse("0"), "b", NOW, LEASE), "covers a's slice"
    assert not await claims.claim(Prefix.parse("011"), "b", NOW, LEASE), "inside a's slice"
    assert await claims.claim(Prefix.parse("00"), "b", NOW, LEASE), "beside it"
    live = await claims.live(NOW)
    assert [(str(c.prefix), c.owner) for c in live] == [("00*", "b"), ("01*", "a")]
    await claims.release(Prefix.parse("01"), "a")
    assert await claims.claim(Prefix.parse("01"), "b", NOW, LEASE), "released: free for anyone"


async def test_a_lapsed_claim_is_taken_over_and_its_owner_finds_out(engine) -> None:
    claims = ClaimStore(engine)
    assert await claims.claim(Prefix.parse("*"), "a", NOW, LEASE)
    assert await claims.renew(Prefix.parse("*"), "a", NOW + LEASE - 1, LEASE), "renewed in time"
    later = NOW + 2 * LEASE
    assert not await claims.claim(Prefix.parse("1"), "b", later - 2, LEASE), "still live"
    assert await claims.claim(Prefix.parse("1"), "b", later, LEASE), "lapsed: taken over"
    assert not await claims.renew(Prefix.parse("*"), "a", later + 1, LEASE), "a learns it lost the claim"
    assert [c.owner for c in await claims.live(later)] == ["b"]


async def test_an_owner_replaces_its_own_overlapping_claims(engine) -> None:
    """A restarted process (same identity) finds its killed run's claim and may claim over it."""
    claims = ClaimStore(engine)
    assert await claims.claim(Prefix.parse("10"), "a", NOW, LEASE)
    assert await claims.claim(Prefix.parse("1"), "a", NOW + 1, LEASE)
    assert [str(c.prefix) for c in await claims.live(NOW + 1)] == ["1*"]


async def test_concurrent_claimers_never_both_win(engine) -> None:
    claims = ClaimStore(engine)
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


async def test_due_queries_skip_other_owners_live_claims(engine) -> None:
    store = ProvideListStore(engine)
    mhs = [Multihash(SHA2_256, hashlib.sha256(b"claim %d" % i).digest()).to_bytes() for i in range(64)]
    await store.add([(cid_string(mh), mh) for mh in mhs], NOW - 10)
    claims = ClaimStore(engine)
    assert await claims.claim(Prefix.parse("0"), "a", NOW, LEASE)
    kad, _ = await store.oldest_due(NOW, "b")
    assert Prefix.parse("1").contains(kad), "b is given keys outside a's slice"
    assert await store.next_due_for("b", NOW) == NOW - 10
    assert await claims.claim(Prefix.parse("1"), "c", NOW, LEASE)
    assert await store.oldest_due(NOW, "b") is None and await store.next_due_for("b", NOW) is None
    assert (await store.oldest_due(NOW, "a")) is not None, "a still sees its own slice"
    assert await store.oldest_due(NOW + LEASE, "b") is not None, "claims lapsed: everything is b's to take"
    assert await store.count_due(Prefix.parse("*"), NOW, 10) == 10
    assert await store.count_due(Prefix.parse("*"), NOW, 1000) == 64
