"""Address, routing-table and storage abuse against a real node over loopback TCP (issue 12).

The rows of issue 12's attack table about identify, addresses, the routing table and
provider storage, each run against a server-mode ``Node`` on its own SQLite store; the
attackers are plain hosts whose identify answer is replaced by a crafted one, or that
serve a hostile kad handler. Work is measured by counting calls (no timing), every wait
is bounded, and nothing is dialled outside loopback: the "public" addresses in claims
are data only, and the addresses an attacker wants dialled are loopback ones, watched
by a counting listener.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from sqlalchemy import select, text

from dhtstore import multihash, varint
from dhtstore.amino import PROTOCOL_ID
from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine
from dhtstore.data.models import PeerRow
from dhtstore.errors import NetworkError
from dhtstore.network import multiaddrs
from dhtstore.network.api import HostLimits, ResourceLimits, ScopeLimits
from dhtstore.network.connection import Stream
from dhtstore.network.host import Host
from dhtstore.network.identify import MAX_LISTEN_ADDRS, MAX_MESSAGE_SIZE, MAX_PROTOCOLS, PUSH_PROTOCOL_ID, parse_identify
from dhtstore.network.identifyservice import DISCONNECTED_MAX_ADDRS, PUSH_BURST
from dhtstore.network.kadcodec import FrameDecoder, encode_frame
from dhtstore.network.kadmessenger import LibP2PKadMessenger
from dhtstore.node import Node
from dhtstore.pb import identify_pb2
from dhtstore.peerbook import MAX_ROW_ADDR_BYTES, MAX_ROW_ADDRS, MAX_ROW_PROTOCOL_BYTES, PeerBook
from dhtstore.peerid import PeerId
from dhtstore.providerstore.api import ProviderQuotas
from dhtstore.routing.api import RoutingError
from dhtstore.routingtable.snapshots import save_snapshot
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds: bound on every wait for the node
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def ip4(a: int, b: int, c: int, d: int, port: int = 4001) -> bytes:
    return bytes([0x04, a, b, c, d, 0x06]) + port.to_bytes(2, "big")


PUBLIC = ip4(8, 8, 8, 8)  # data only: never dialled (nothing here dials a claimed address)
PRIVATE = (ip4(10, 0, 0, 1), ip4(192, 168, 1, 1), ip4(169, 254, 169, 254, 80), ip4(127, 0, 0, 1, 22))


def sha256_mh(data: bytes) -> bytes:
    return b"\x12\x20" + hashlib.sha256(data).digest()


def random_peer() -> PeerId:
    return PrivateKey.generate().peer_id()


def crafted_identify(key: PrivateKey, addrs: list[bytes], protocols: list[str]) -> bytes:
    """An identify stream at the parse limit: as many delimited messages of at most
    MAX_MESSAGE_SIZE as the protocols and addresses need (go merges them)."""
    messages = [identify_pb2.Identify(publicKey=key.public_key().to_protobuf(), agentVersion="x" * 200)]
    for field, values in (("protocols", protocols), ("listenAddrs", addrs)):
        for value in values:
            getattr(messages[-1], field).append(value)
            if messages[-1].ByteSize() > MAX_MESSAGE_SIZE:
                del getattr(messages[-1], field)[-1]
                messages.append(identify_pb2.Identify(**{field: [value]}))
    assert len(messages) <= 10
    return b"".join(varint.encode(m.ByteSize()) + m.SerializeToString() for m in messages)


def many_addrs(n: int) -> list[bytes]:
    return [ip4(10, i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(n)]


@asynccontextmanager
async def attacker(monkeypatch: pytest.MonkeyPatch, identify: Callable[[PrivateKey], bytes]) -> AsyncIterator[Host]:
    """A host whose identify answer is ``identify(its key)``."""
    key = PrivateKey.generate()
    async with Host(key) as host:
        crafted = identify(key)
        monkeypatch.setattr(host.identify, "our_message", lambda _conn: crafted)
        yield host


def target(node: Node) -> PeerInfo:
    return PeerInfo(node.peer_id, tuple(a.to_bytes() for a in node.host.listen_addrs))


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT):
        while not condition():
            await anyio.sleep(0.01)


@asynccontextmanager
async def started(options: Any) -> AsyncIterator[Node]:
    async with Node.start(options) as node:
        yield node


@pytest.fixture
def public_options(sqlite_store_url: str, loopback_options: Callable[..., Any]) -> Any:
    """A node on loopback with the public DHT's rules (``--public-addrs-only``)."""
    return dataclasses.replace(loopback_options(sqlite_store_url), allow_private_addrs=False, ip_diversity=True)


@asynccontextmanager
async def counting_listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP listener on 127.0.0.1 that counts the connections it is given (and closes them)."""
    accepted: list[int] = []

    async def handle(sock: anyio.abc.SocketStream) -> None:
        accepted.append(1)
        await sock.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield port, accepted
        tg.cancel_scope.cancel()
    await listener.aclose()


async def ask(client: Host, node: Node, request: Message) -> Message:
    stream = await client.new_stream(target(node), [PROTOCOL_ID])
    decoder = FrameDecoder()
    await stream.send(encode_frame(request))
    with anyio.fail_after(WAIT):
        while (reply := decoder.next_message()) is None:
            decoder.receive_data(await stream.receive())
    await stream.aclose()
    return reply


# -- identify at the parse limit ------------------------------------------------------


@pytest.fixture
def is_valid_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many addresses the node checks: the work an identify message costs it."""
    calls = [0]
    real = multiaddrs.is_valid

    def counting(data: bytes) -> bool:
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(multiaddrs, "is_valid", counting)
    yield calls


async def test_identify_at_the_parse_limit_costs_bounded_work_and_rows(
    sqlite_store_url: str, loopback_options: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, is_valid_calls: list[int]
) -> None:
    claimed = many_addrs(8_000)

    def identify(key: PrivateKey) -> bytes:
        return crafted_identify(key, claimed, [PROTOCOL_ID, PUSH_PROTOCOL_ID])

    parsed = parse_identify(identify(PrivateKey.generate()))
    assert len(parsed.listen_addrs) + parsed.skipped > 7_900  # really ~8,000 claimed

    async with started(loopback_options(sqlite_store_url)) as node:
        identified: list[PeerId] = []
        node.host.on_identify(lambda peer, _info: identified.append(peer))
        async with attacker(monkeypatch, identify) as evil:
            evil_id = evil.peer_id
            is_valid_calls[0] = 0
            await evil.connect(target(node))
            await wait_until(lambda: evil_id in identified)
            info = node.host.identify.info(evil_id)
            assert info is not None and len(info.listen_addrs) == MAX_LISTEN_ADDRS
            assert len(node.host.peer_addrs(evil_id)) <= MAX_LISTEN_ADDRS
            await wait_until(lambda: evil_id in node.table)
            entry = node.table.get(evil_id)
            assert entry is not None and len(entry.addrs) <= MAX_LISTEN_ADDRS

            # Pushes at the parse limit: a burst is taken, the rest are reset unread.
            pushes = 3 * int(PUSH_BURST)
            crafted = identify(evil.identity)
            for _ in range(pushes):
                try:
                    stream = await evil.new_stream(node.peer_id, [PUSH_PROTOCOL_ID])
                    await stream.send(crafted)
                    await stream.aclose()
                except (NetworkError, anyio.BrokenResourceError):
                    pass

            def limited() -> int:
                return node.host.stats["identify_push_limited"]

            await wait_until(lambda: identified.count(evil_id) - 1 + limited() >= pushes)
            assert limited() >= pushes - PUSH_BURST - 1  # a token may refill meanwhile
            # Work: the addresses checked per message taken are capped (parsing, then the
            # address book); each message cost ~16,000 checks before.
            assert is_valid_calls[0] <= identified.count(evil_id) * 2 * MAX_LISTEN_ADDRS + 100

            # The row the peer book writes is bounded, whatever was claimed.
            assert node.engine is not None
            book = PeerBook(node.engine)
            claims = dataclasses.replace(info, protocols=tuple(f"/claimed/protocol/{i:012}" for i in range(MAX_PROTOCOLS)))
            book.on_identify(evil_id, claims)
            await book.flush()
            async with node.engine.connect() as conn:
                query = select(PeerRow.addrs, PeerRow.protocols, PeerRow.agent).where(PeerRow.peer_id == evil_id.to_bytes())
                row = (await conn.execute(query)).one()
            assert len(row.addrs) <= MAX_ROW_ADDR_BYTES + 2 * MAX_ROW_ADDRS
            assert len(row.protocols) <= MAX_ROW_PROTOCOL_BYTES and len(row.agent) <= 256

        # Once it is gone, a few addresses are kept (go's recentlyConnectedPeerMaxAddrs).
        await wait_until(lambda: node.host.connection(evil_id) is None)
        assert 0 < len(node.host.peer_addrs(evil_id)) <= DISCONNECTED_MAX_ADDRS


def test_protocols_past_the_cap_are_counted_not_kept() -> None:
    key = PrivateKey.generate()
    data = crafted_identify(key, [], [f"/p/{i}" for i in range(3 * MAX_PROTOCOLS)])
    info = parse_identify(data)
    assert len(info.protocols) == MAX_PROTOCOLS and info.skipped == 2 * MAX_PROTOCOLS


# -- the routing table: real remote IPs ---------------------------------------------


async def test_peers_from_one_ip_claiming_different_slash16s_are_admitted_up_to_the_limit(
    sqlite_store_url: str, loopback_options: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 peers, all connecting from 127.0.0.1, each claiming a listen address in its own
    /16 (127.1.0.1, 127.2.0.1, …: loopback, so nothing leaves the machine)."""
    # The per-IP connection limit (8, network.resources) would refuse some of the 12
    # first; raised here so that the table's own diversity limit is what is tested.
    limits = HostLimits(resources=ResourceLimits(ip=ScopeLimits(inbound_connections=32, handshakes=32)))
    options = dataclasses.replace(loopback_options(sqlite_store_url), ip_diversity=True, limits=limits)
    async with started(options) as node, anyio.create_task_group() as tg:
        done = anyio.Event()
        ready: list[int] = []

        async def one(i: int) -> None:
            def identify(key: PrivateKey) -> bytes:
                return crafted_identify(key, [ip4(127, i + 1, 0, 1)], [PROTOCOL_ID])

            async with attacker(monkeypatch, identify) as evil:
                await evil.connect(target(node))
                ready.append(i)
                await done.wait()

        for i in range(12):
            tg.start_soon(one, i)
        counters = node.upkeep.counters
        await wait_until(lambda: counters["admitted"] + counters["refused_bucket_full"] >= 12)
        assert counters["admitted"] <= 3 and len(node.table) <= 3  # go: 3 per /16 per table
        done.set()


# -- addresses told honestly ----------------------------------------------------------


async def test_find_node_replies_carry_only_public_addresses_in_public_mode(public_options: Any) -> None:
    async with started(public_options) as node, Host(PrivateKey.generate()) as client:
        mixed = [PeerInfo(random_peer(), (ip4(8, 8, i, 1), *PRIVATE)) for i in range(15)]
        private_only = [PeerInfo(random_peer(), PRIVATE) for _ in range(15)]
        for peer in mixed + private_only:
            node.table.add(peer, 0.0)
            node.host.add_addrs(peer.peer_id, PRIVATE)  # what identify said, for instance
        for _ in range(5):
            reply = await ask(client, node, Message(MessageType.FIND_NODE, key=os.urandom(32)))
            assert reply.closer_peers
            served = [a for p in reply.closer_peers for a in p.addrs]
            assert served and all(multiaddrs.is_public_addr(a) for a in served), multiaddrs.printable(served)
            assert {p.peer_id for p in reply.closer_peers} <= {p.peer_id for p in mixed}
        # The target of a FIND_NODE, when we know it only at private addresses, is not named.
        hidden = private_only[0].peer_id
        reply = await ask(client, node, Message(MessageType.FIND_NODE, key=hidden.to_bytes()))
        assert hidden not in [p.peer_id for p in reply.closer_peers]


@asynccontextmanager
async def hostile_kad_server(closer: tuple[PeerInfo, ...]) -> AsyncIterator[tuple[Host, list[int]]]:
    """A host serving the kad protocol whose every FIND_NODE answer is ``closer``."""
    asked: list[int] = []

    async def handle(stream: Stream) -> None:
        decoder = FrameDecoder()
        for _ in range(100):  # requests on one stream
            while (request := decoder.next_message()) is None:
                try:
                    decoder.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            asked.append(1)
            await stream.send(encode_frame(Message(MessageType.FIND_NODE, key=request.key, closer_peers=closer)))

    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_handler(PROTOCOL_ID, handle)
        yield host, asked


async def test_a_lookup_never_dials_loopback_addresses_from_a_reply_in_public_mode(public_options: Any) -> None:
    async with counting_listener() as (port, accepted):
        lure = tuple(PeerInfo(random_peer(), (ip4(127, 0, 0, 1, port), ip4(127, 0, 0, 2, port))) for _ in range(20))
        async with started(public_options) as node, hostile_kad_server(lure) as (evil, asked):
            node.table.add(PeerInfo(evil.peer_id, tuple(a.to_bytes() for a in evil.listen_addrs)), 0.0)
            for _ in range(2):
                try:
                    await node.closest_peers(os.urandom(32), timeout=WAIT)
                except RoutingError:
                    pass
            assert asked  # the poisoned reply was received
            assert accepted == []  # and none of its addresses was dialled (40 connections before)


# -- provider records -----------------------------------------------------------------


async def add_provider(client: Host, node: Node, key: bytes, addrs: tuple[bytes, ...]) -> None:
    message = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(PeerInfo(client.peer_id, addrs),))
    await LibP2PKadMessenger(client).send(target(node), message)


def handled(node: Node, *outcomes: str) -> int:
    return sum(node.handler.counters[("ADD_PROVIDER", o)] for o in outcomes)


async def test_an_add_provider_flood_from_one_identity_stops_at_its_quota(
    sqlite_store_url: str, loopback_options: Callable[..., Any]
) -> None:
    quota = 50
    options = dataclasses.replace(loopback_options(sqlite_store_url), provider_quotas=ProviderQuotas(per_provider=quota))
    async with started(options) as node, Host(PrivateKey.generate()) as flooder, Host(PrivateKey.generate()) as honest:
        keys = [sha256_mh(os.urandom(16)) for _ in range(80)]
        for key in keys:
            await add_provider(flooder, node, key, (ip4(127, 0, 0, 1),))
        await wait_until(lambda: handled(node, "ok", "quota_provider") >= len(keys))
        assert node.handler.counters[("ADD_PROVIDER", "quota_provider")] == len(keys) - quota
        # A re-announcement at the quota is taken; another provider is not affected.
        await add_provider(flooder, node, keys[0], (ip4(127, 0, 0, 1),))
        await add_provider(honest, node, keys[-1], (ip4(127, 0, 0, 1),))
        await wait_until(lambda: handled(node, "ok", "quota_provider") >= len(keys) + 2)
        assert node.handler.counters[("ADD_PROVIDER", "ok")] == quota + 2
        assert node.engine is not None
        async with node.engine.connect() as conn:
            usage = dict((await conn.execute(text("SELECT peer_id, records FROM v_provider_usage"))).all())
        assert usage == {flooder.peer_id.to_base58(): quota, honest.peer_id.to_base58(): 1}


async def test_private_provider_addresses_are_neither_stored_nor_served_in_public_mode(public_options: Any) -> None:
    async with started(public_options) as node, Host(PrivateKey.generate()) as client:
        key = multihash.from_cid(CID)
        await add_provider(client, node, key, (*PRIVATE, PUBLIC))
        await wait_until(lambda: handled(node, "ok") >= 1)
        [stored] = await node.providers.get_providers(key)
        assert stored.provider.addrs == (PUBLIC,)
        # A record stored with private addresses anyway (before, or by another process of
        # a shared store) is served without them.
        other, old = random_peer(), sha256_mh(b"old")
        await node.providers.add_provider(old, other, (*PRIVATE, PUBLIC))
        reply = await ask(client, node, Message(MessageType.GET_PROVIDERS, key=old))
        assert [p.addrs for p in reply.provider_peers] == [(PUBLIC,)]


async def test_a_poisoned_snapshot_is_filtered_before_anything_is_dialled(public_options: Any) -> None:
    async with counting_listener() as (port, accepted):
        poisoned = [PeerInfo(random_peer(), (ip4(127, 0, 0, 1, port),)) for _ in range(10)]
        assert public_options.store_url is not None
        engine = make_engine(public_options.store_url)
        try:
            await save_snapshot(engine, public_options.identity.peer_id(), poisoned)
        finally:
            await engine.dispose()
        async with started(public_options) as node:
            with anyio.fail_after(WAIT):
                await node.upkeep.bootstrapped.wait()
            assert node.upkeep.bootstrap_peers == []
            assert all(node.host.peer_addrs(p.peer_id) == () for p in poisoned)
        assert accepted == []  # every one was dialled at start before


# -- the address rules ----------------------------------------------------------------

PEER_SUFFIX = "/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@pytest.mark.parametrize(
    ("text", "public"),
    [
        ("/ip4/8.8.8.8/tcp/4001", True),
        ("/ip4/8.8.8.8/tcp/4001" + PEER_SUFFIX, True),
        ("/ip6/2606:4700::1111/tcp/4001", True),
        ("/ip4/127.0.0.1/tcp/4001", False),
        ("/ip4/10.1.2.3/tcp/4001", False),
        ("/ip4/100.64.0.1/tcp/4001", False),  # carrier-grade NAT
        ("/ip4/169.254.169.254/tcp/80", False),
        ("/ip6/::1/tcp/4001", False),
        ("/ip6/fe80::1/tcp/4001", False),
        ("/ip4/8.8.8.8/udp/4001/quic-v1", True),  # QUIC v1: we dial it
        ("/ip6/2606:4700::1/udp/4001/quic-v1", True),
        ("/ip4/10.0.0.1/udp/4001/quic-v1", False),
        ("/ip4/8.8.8.8/udp/4001/quic", False),  # draft-29 QUIC: nothing we dial
        ("/ip4/8.8.8.8/udp/4001", False),
        ("/ip4/8.8.8.8/udp/4001/quic-v1/webtransport", False),
        ("/ip4/8.8.8.8/tcp/4001/ws", False),
        ("/dns4/example.com/tcp/4001", False),
    ],
)
def test_is_public_addr_reads_the_bytes_as_the_multiaddr_package_does(text: str, public: bool) -> None:
    raw = multiaddrs.parse(text).to_bytes()
    assert multiaddrs.is_public_addr(raw) is public
    assert multiaddrs.tcp_ip(raw[:-1]) is None  # truncated


def test_claimed_addresses_are_kept_as_the_connection_allows() -> None:
    loopback, lan, public, other = ip4(127, 0, 0, 1), ip4(192, 168, 1, 5), ip4(8, 8, 8, 8), ip4(9, 9, 9, 9)
    claimed = (loopback, lan, public, other)
    assert multiaddrs.for_remote(claimed, ip4(127, 0, 0, 1, 50000)) == claimed
    assert multiaddrs.for_remote(claimed, ip4(192, 168, 1, 5, 50000)) == (lan, public, other)
    quic_loopback = multiaddrs.parse("/ip4/127.0.0.1/udp/4001/quic-v1").to_bytes()
    assert multiaddrs.for_remote((quic_loopback, lan), ip4(10, 0, 0, 7, 50000)) == (lan,)
    assert multiaddrs.for_remote(claimed, ip4(8, 8, 8, 8, 50000)) == (public, other)
    # Handed on only at the IP the connection comes from.
    assert multiaddrs.same_ip(claimed, ip4(8, 8, 8, 8, 50000)) == (public,)
    assert multiaddrs.same_ip(claimed, None) == ()
