"""Revision 0007 (crawl claims) on a store filled at 0006: every row kept, the shared
crawl's tables usable, and the downgrade back to 0006 keeps the rows too."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import insert, inspect, select

from dhtstore.data.addrs import addr_kinds, pack_addrs
from dhtstore.data.engine import make_engine
from dhtstore.data.models import NetworkPeerRow, ReprovideClaimRow
from dhtstore.data.schema import downgrade, upgrade
from dhtstore.kadkey import Key
from dhtstore.peerid import PeerId
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.rtrefresh.crawlshards import CrawlShards

pytestmark = pytest.mark.anyio

REVISION, PREVIOUS = "0007", "0006"
TCP4 = bytes.fromhex("047f000001060fa1")


def _peer_row(i: int) -> dict[str, object]:
    pid = bytes([0, 0x24, 8, 1, 0x12, 0x20]) + hashlib.sha256(b"peer %d" % i).digest()
    return {
        "peer_id": pid, "peer_id_text": PeerId(pid).to_base58(), "kad_key": hashlib.sha256(pid).digest(),
        "addrs": pack_addrs((TCP4,)), "addr_kinds": addr_kinds((TCP4,)), "agent": "kubo/0.30.0", "protocols": "/ipfs/kad/1.0.0",
        "first_seen_at": 1_900_000_000 + i, "last_seen_at": 1_900_000_100 + i, "last_contact_at": None,
        "failures": i % 2, "crawled_at": None if i == 0 else 1_900_000_050 + i,
    }


async def _tables(engine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_from_a_filled_0006_store_keeps_every_row_and_downgrades(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        await upgrade(engine, PREVIOUS)
        peers = [_peer_row(i) for i in range(5)]
        claim = {"region": "01*", "first_key": b"\x40" + bytes(31), "last_key": b"\x7f" + b"\xff" * 31,
                 "owner": "someone", "claimed_at": 1, "expires_at": 2}
        async with engine.begin() as conn:
            await conn.execute(insert(NetworkPeerRow), peers)
            await conn.execute(insert(ReprovideClaimRow), [claim])

        await upgrade(engine, REVISION)
        assert {"crawl_heads", "crawl_claims"} <= await _tables(engine)
        async with engine.connect() as conn:
            kept = [r._asdict() for r in (await conn.execute(select(*NetworkPeerRow.__table__.c).order_by(NetworkPeerRow.first_seen_at))).all()]
            claims = (await conn.execute(select(ReprovideClaimRow.region))).scalars().all()
        assert kept == peers and claims == ["01*"]
        table = FullTable(Key(0), engine, shared=True)
        assert await table.load() == 5 and await table.read_in() >= 0
        shards = CrawlShards(engine, "head-a")
        assert len((await shards.rebalance()).shards) == 16  # alone: every shard

        await downgrade(engine, PREVIOUS)
        assert not {"crawl_heads", "crawl_claims"} & await _tables(engine)
        async with engine.connect() as conn:
            again = [r._asdict() for r in (await conn.execute(select(*NetworkPeerRow.__table__.c).order_by(NetworkPeerRow.first_seen_at))).all()]
        assert again == peers
        await downgrade(engine, "base")  # leave the session's PG database empty for the next test
    finally:
        await engine.dispose()
