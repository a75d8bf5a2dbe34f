"""IP diversity in the full routing table: one machine (one IP) or one subnet (IPv4 /24,
IPv6 /48) cannot fill it with generated peer ids; the address counted is the one the
peer was seen at, not the ones it claims; loading the store and the crawler obey it."""

from __future__ import annotations

import random

import pytest

from dhtstore.data.engine import make_engine
from dhtstore.kadkey import Key
from dhtstore.peerid import PeerId
from dhtstore.routingtable.fulltable import MAX_PEERS_PER_IP, MAX_PEERS_PER_SUBNET, FullTable
from dhtstore.rtrefresh.crawler import Crawler
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = pytest.mark.anyio

PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
TCP = bytes.fromhex("060fa1")


def ip4(a: int, b: int, c: int, d: int) -> bytes:
    return b"\x04" + bytes([a, b, c, d]) + TCP


def ip6(*groups: int) -> bytes:
    return b"\x29" + b"".join(g.to_bytes(2, "big") for g in (*groups, *[0] * (8 - len(groups)))) + TCP


def peers(rng: random.Random, n: int, addr: bytes) -> list[PeerInfo]:
    return [PeerInfo(PeerId(PREFIX + rng.randbytes(32)), (addr,)) for _ in range(n)]


def table(**kw) -> FullTable:
    return FullTable(Key(1 << 255), ip_diversity=True, **kw)


def test_many_peer_ids_from_one_ip_take_only_the_per_ip_limit() -> None:
    rng = random.Random(1)
    t = table()
    machine = ip4(203, 0, 113, 7)
    admitted = [p for p in peers(rng, 200, machine) if t.add(p, 0.0, seen_from=machine)]
    assert len(admitted) == len(t) == MAX_PEERS_PER_IP
    assert t.refused_by_ip == 200 - MAX_PEERS_PER_IP
    # Others still get in, and a peer in the table refreshes without being counted again.
    assert t.add(peers(rng, 1, ip4(198, 51, 100, 1))[0], 0.0)
    assert t.add(admitted[0], 1.0, seen_from=machine)
    assert len(t) == MAX_PEERS_PER_IP + 1


def test_one_subnet_takes_only_the_per_subnet_limit_ipv4_24_and_ipv6_48() -> None:
    rng = random.Random(2)
    t = table()
    v4 = [p for i in range(100) for p in peers(rng, 1, ip4(203, 0, 113, i))]  # 100 IPs of one /24
    assert sum(t.add(p, 0.0) for p in v4) == MAX_PEERS_PER_SUBNET
    v6 = [p for i in range(100) for p in peers(rng, 1, ip6(0x2001, 0xDB8, 0x1, i))]  # one /48
    assert sum(t.add(p, 0.0) for p in v6) == MAX_PEERS_PER_SUBNET
    # The next /24 and the next /48 are other groups.
    assert t.add(peers(rng, 1, ip4(203, 0, 114, 1))[0], 0.0)
    assert t.add(peers(rng, 1, ip6(0x2001, 0xDB8, 0x2, 1))[0], 0.0)


def test_the_address_seen_counts_not_the_claimed_one_and_removal_frees_a_slot() -> None:
    rng = random.Random(3)
    t = table()
    machine = ip4(203, 0, 113, 7)
    first = peers(rng, MAX_PEERS_PER_IP, machine)
    assert all(t.add(p, 0.0, seen_from=machine) for p in first)
    liar = peers(rng, 1, ip4(198, 51, 100, 99))[0]  # claims another address, connects from the machine
    assert not t.add(liar, 0.0, seen_from=machine)
    assert t.remove(first[0].peer_id)
    assert t.add(liar, 0.0, seen_from=machine)
    t.mark_failed(liar.peer_id)  # failures that remove a peer free its slot too
    t.mark_failed(liar.peer_id)
    t.mark_failed(liar.peer_id)
    assert liar.peer_id not in t
    assert t.add(peers(rng, 1, machine)[0], 0.0, seen_from=machine)


def test_without_diversity_every_server_fits() -> None:
    rng = random.Random(4)
    t = FullTable(Key(1 << 255))
    machine = ip4(127, 0, 0, 1)
    assert all(t.add(p, 0.0, seen_from=machine) for p in peers(rng, 100, machine))
    assert len(t) == 100


async def test_loading_the_store_applies_the_limit(sqlite_store_url: str) -> None:
    rng = random.Random(5)
    engine = make_engine(sqlite_store_url)
    try:
        writer = FullTable(Key(1 << 255), engine)  # written without the limit (loopback, or older rows)
        for p in peers(rng, 40, ip4(203, 0, 113, 7)) + peers(rng, 5, ip4(198, 51, 100, 1)):
            writer.add(p, 0.0)
        await writer.flush()
        loaded = FullTable(Key(1 << 255), engine, ip_diversity=True)
        assert await loaded.load() == MAX_PEERS_PER_IP + MAX_PEERS_PER_IP
        assert loaded.refused_by_ip == 37 + 2
    finally:
        await engine.dispose()


class SilentMessenger:
    """Answers every FIND_NODE with no closer peer."""

    def __init__(self) -> None:
        self.asked: list[PeerId] = []

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        self.asked.append(peer.peer_id)
        return Message(MessageType.FIND_NODE, key=message.key)

    async def send(self, peer: PeerInfo, message: Message) -> None:  # pragma: no cover - unused
        raise AssertionError("the crawler only requests")


async def test_the_crawler_counts_the_address_it_reached_and_does_not_revisit_refused_peers() -> None:
    rng = random.Random(6)
    t = table()
    machine = ip4(203, 0, 113, 7)
    messenger = SilentMessenger()
    crawler = Crawler(t, messenger, remote_addr=lambda _peer: machine, preimages=[b"\x12\x20" + bytes(32)] * (1 << 16))
    # each claims an IP of its own, all answer from the machine
    flood = [PeerInfo(p.peer_id, (ip4(198, 51, 100, i),)) for i, p in enumerate(peers(rng, 10, machine))]
    for p in flood:
        await crawler.visit(p)
    assert len(t) == MAX_PEERS_PER_IP
    assert crawler.counters["refused"] == 10 - MAX_PEERS_PER_IP
    crawler._discover(flood)  # named again by someone: the refused ones wait
    assert {p.peer_id for p in crawler.next_batch(20)} & {p.peer_id for p in flood} == set()
