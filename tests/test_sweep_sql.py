"""The sweep on the SQL provide list (SQLite, PostgreSQL) against an exact oracle of the
k closest servers: a region is explored once however its due keys lie in the table."""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from dhtstore.data.schema import open_store
from dhtstore.kadkey import Key
from dhtstore.multihash import cid_string
from dhtstore.peerid import PeerId
from dhtstore.provider.api import SweepConfig
from dhtstore.provider.claims import SqlClaimStore
from dhtstore.provider.providelist import ProvideListStore
from dhtstore.provider.reprovider import Reprovider
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = pytest.mark.anyio

ADDR = (b"\x04\x7f\x00\x00\x01",)


def peer(seed: bytes) -> PeerInfo:
    return PeerInfo(PeerId(b"\x00\x24\x08\x01\x12\x20" + hashlib.sha256(seed).digest()), ADDR)


class Oracle:
    """The exact k closest of a fixed set of servers; notes every lookup's target."""

    def __init__(self, servers: int):
        self.peers = [peer(b"server%d" % i) for i in range(servers)]
        self.targets: list[bytes] = []

    async def find_closest_peers(self, key: bytes, n: int = 20) -> list[PeerInfo]:
        self.targets.append(key)
        target = Key.hash(key).value
        return sorted(self.peers, key=lambda p: Key.for_peer(p.peer_id).value ^ target)[:n]


class Servers:
    """Takes every ADD_PROVIDER and answers the FIND_NODE that confirms them."""

    def __init__(self) -> None:
        self.sent = 0

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        assert message.type is MessageType.FIND_NODE
        return Message(MessageType.FIND_NODE)

    async def send(self, peer: PeerInfo, message: Message) -> None:
        self.sent += 1


async def test_a_regions_slices_share_one_exploration_whatever_the_tables_order(store_url: str) -> None:
    # Keys added one by one in random order, all due at the same second: the table's
    # order (SQLite's rowids, PostgreSQL's heap) interleaves the regions, and ties in
    # next_due_at come out in that order. Slices of 40 keys: several per region.
    keys = [b"\x12\x20" + hashlib.sha256(b"sweep%d" % i).digest() for i in range(1_200)]
    random.Random(7).shuffle(keys)
    now = int(time.time())
    engine = await open_store(store_url)
    try:
        store = ProvideListStore(engine)
        for mh in keys:
            await store.add([(cid_string(mh), mh)], now)
        oracle, servers = Oracle(200), Servers()
        me = peer(b"me")
        r = Reprovider(store, SqlClaimStore(engine), oracle, servers, lambda: me, config=SweepConfig(claim_batch=40), clock=lambda: now)
        visits = await r.run_due()
        regions = await store.regions()
    finally:
        await engine.dispose()
    assert servers.sent == 20 * len(keys)
    # A region's slices share one exploration: lookups in a few visits, not in most.
    # (An exploration may widen over a region explored before, so not exactly one each.)
    explored = [v.prefix for v in visits if v.lookups]
    assert len(visits) >= 1_200 // 40, "several slices per region"
    assert len(explored) <= 2 * len(regions), f"{len(explored)} of {len(visits)} visits explored, {len(regions)} regions"
