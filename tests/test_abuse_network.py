"""Attacks on the network layer of a server node, over loopback TCP (issue 12).

Each test runs one attack of the issue's table against a server-mode ``Node`` with the
default limits, from 127.0.0.1, while an honest peer listening on 127.0.0.2 (its dials
leave from there) must still connect and be answered. The liveness tests use a plain
host with short keep-alive and write timeouts. Every wait is bounded.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any, cast

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import generate_latest
from cryptography.hazmat.primitives.asymmetric import rsa

from dhtstore import varint
from dhtstore.amino import MAX_MESSAGE_SIZE, PROTOCOL_ID
from dhtstore.crypto.keys import PrivateKey
from dhtstore.errors import NetworkError
from dhtstore.network import multiaddrs, tcp, yamux
from dhtstore.network.connection import CONNECTION_ERRORS, Stream, Upgraded, upgrade
from dhtstore.network.host import Host, HostLimits
from dhtstore.network.kadmessenger import LibP2PKadMessenger
from dhtstore.network.resources import ResourceLimits
from dhtstore.node import Node
from dhtstore.peerid import PeerId
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = pytest.mark.anyio

HONEST_IP = "127.0.0.2"
WAIT = 20.0  # seconds: bound on every wait


@pytest.fixture(autouse=True)
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No attack may make the node log a warning, or any traceback."""
    caplog.set_level(logging.DEBUG, logger="dhtstore")
    yield
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in loud]


@pytest.fixture
async def node(loopback_options: Callable[..., Any]) -> AsyncIterator[Node]:
    async with Node.start(loopback_options(None)) as started:
        yield started


@pytest.fixture
async def honest() -> AsyncIterator[Host]:
    async with Host(PrivateKey.generate(), [f"/ip4/{HONEST_IP}/tcp/0"]) as host:
        yield host


def target(node: Node) -> PeerInfo:
    return PeerInfo(node.peer_id, tuple(a.to_bytes() for a in node.host.listen_addrs))


def endpoint(node: Node) -> tuple[str, int]:
    return multiaddrs.tcp_endpoint(node.host.listen_addrs[0])


async def assert_answered(honest: Host, node: Node) -> None:
    """The honest peer connects from 127.0.0.2 and gets a FIND_NODE answered."""
    with anyio.fail_after(WAIT):
        reply = await LibP2PKadMessenger(honest).request(target(node), Message(MessageType.FIND_NODE, key=b"k" * 32))
    assert reply.type is MessageType.FIND_NODE
    conn = honest.connection(node.peer_id)
    assert conn is not None and str(conn.local_addr).startswith(f"/ip4/{HONEST_IP}/")


async def test_512_connections_from_one_ip_holding_streams_leave_room_for_others(node: Node, honest: Host) -> None:
    held: list[Stream] = []
    refused = 0
    async with AsyncExitStack() as stack:
        attackers = [await stack.enter_async_context(Host(PrivateKey.generate())) for _ in range(512)]

        async def attack(attacker: Host) -> None:
            nonlocal refused
            try:
                stream = await attacker.new_stream(target(node), ["/ipfs/ping/1.0.0"])
            except NetworkError:
                refused += 1
                return
            held.append(stream)  # kept open, never pinged

        with anyio.fail_after(WAIT * 3):
            for start in range(0, 512, 64):
                async with anyio.create_task_group() as tg:
                    for attacker in attackers[start : start + 64]:
                        tg.start_soon(attack, attacker)
        await assert_answered(honest, node)  # while the attackers hold what they got
        per_ip = ResourceLimits().ip.inbound_connections
        assert len(held) <= per_ip and refused >= 512 - per_ip
        assert node.host.resources.usage("ip", "127.0.0.1")["inbound_connections"] <= per_ip
        stats = node.host.stats
        assert stats["limit_ip_inbound_connections"] + stats["limit_ip_handshakes"] >= 512 - per_ip
        scrape = generate_latest(node.metrics.registry).decode()  # the hits and the usage, as Prometheus sees them
        assert 'event="limit_ip_inbound_connections"' in scrape
        assert 'dhtstore_resource_usage{identity="default",peer_id="%s",resource="inbound_connections"}' % node.peer_id in scrape


async def test_64_silent_sockets_neither_lock_out_others_nor_stay(node: Node, honest: Host) -> None:
    host, port = endpoint(node)
    async with AsyncExitStack() as stack:
        silent = [await stack.enter_async_context(await anyio.connect_tcp(host, port)) for _ in range(64)]
        await assert_answered(honest, node)
        with anyio.fail_after(WAIT):  # every one is closed by the node, none sent a byte
            for sock in silent:
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:
                        assert await sock.receive() == b""
    assert node.host.stats["silent_sockets_dropped"] >= 1
    stats, per_ip = node.host.stats, min(ResourceLimits().ip.handshakes, ResourceLimits().ip.inbound_connections)
    assert stats["limit_ip_handshakes"] + stats["limit_ip_inbound_connections"] >= 64 - per_ip


async def test_64_kad_streams_announcing_4_mib_frames_stay_within_the_memory_budget(node: Node, honest: Host) -> None:
    budget = ResourceLimits().connection.memory  # two whole messages on one connection
    peak = 0
    reset = 0
    async with Host(PrivateKey.generate()) as attacker:
        streams = [await attacker.new_stream(target(node), [PROTOCOL_ID]) for _ in range(64)]
        chunk = b"\x00" * 65536

        async def announce(stream: Stream) -> None:
            nonlocal reset
            try:
                await stream.send(varint.encode(MAX_MESSAGE_SIZE))
                for _ in range(MAX_MESSAGE_SIZE // len(chunk) - 1):
                    await stream.send(chunk)
                await stream.send(chunk[:-1])  # all but the last byte
            except CONNECTION_ERRORS:
                reset += 1

        async def watch(done: anyio.Event) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, node.host.resources.usage().get("memory", 0))
                await anyio.sleep(0.005)

        done = anyio.Event()
        with anyio.fail_after(WAIT * 3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, done)
                async with anyio.create_task_group() as senders:
                    for stream in streams:
                        senders.start_soon(announce, stream)
                with anyio.fail_after(WAIT):  # until the node has buffered what it admitted
                    while node.host.resources.usage().get("memory", 0) < budget:
                        await anyio.sleep(0.01)
                done.set()
        assert reset >= 64 - budget // MAX_MESSAGE_SIZE
        assert peak <= budget
        assert node.host.stats["limit_connection_memory"] >= 64 - budget // MAX_MESSAGE_SIZE
        await assert_answered(honest, node)
    with anyio.fail_after(WAIT):  # the attacker gone, its reservations are given back
        while node.host.resources.usage().get("memory", 0):
            await anyio.sleep(0.01)


class _ForgedIdentity:
    """Stands in for a PrivateKey in the Noise handshake: any key, a junk signature."""

    def __init__(self, key_protobuf: bytes):
        self._key_protobuf = key_protobuf

    def public_key(self) -> _ForgedIdentity:
        return self

    def to_protobuf(self) -> bytes:
        return self._key_protobuf

    def sign(self, message: bytes) -> bytes:
        return b"\x01" * 512


def _key_protobuf(key_type: int, data: bytes) -> bytes:
    return b"\x08" + varint.encode(key_type) + b"\x12" + varint.encode(len(data)) + data


def _rsa(bits: int, exponent: int) -> bytes:
    modulus = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    der = rsa.RSAPublicNumbers(exponent, modulus).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _key_protobuf(0, der)


def _ec_on(curve_oid: bytes, point_size: int) -> bytes:
    """A PKIX EC public key on the curve with that DER-encoded OID (cryptography cannot make one)."""

    def tlv(tag: int, body: bytes) -> bytes:
        return bytes([tag, len(body)]) + body

    ec_public_key = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1
    point = b"\x04" + secrets.token_bytes(2 * point_size)
    der = tlv(0x30, tlv(0x30, tlv(0x06, ec_public_key) + tlv(0x06, curve_oid)) + tlv(0x03, b"\x00" + point))
    return _key_protobuf(3, der)


FORGED_KEYS = {
    "rsa-16384": (_rsa(16384, 65537), "16384 bits is outside"),
    "rsa-4096 with a 3064-bit exponent": (_rsa(4096, secrets.randbits(3064) | (1 << 3063) | 1), "exponent"),
    "secp224k1": (_ec_on(bytes.fromhex("2b81040020"), 28), "invalid ECDSA public key"),
    "secp112r1": (_ec_on(bytes.fromhex("2b81040006"), 14), "invalid ECDSA public key"),
}


@pytest.mark.parametrize("name", FORGED_KEYS)
async def test_oversize_rsa_keys_big_exponents_and_unsupported_curves_are_refused_at_parse(
    name: str, node: Node, honest: Host, caplog: pytest.LogCaptureFixture
) -> None:
    key, reason = FORGED_KEYS[name]
    host, port = endpoint(node)
    for _ in range(20):
        sock = await tcp.connect(host, port)
        try:
            with anyio.fail_after(WAIT), pytest.raises(CONNECTION_ERRORS):
                await upgrade(sock, cast(PrivateKey, _ForgedIdentity(key)), True, node.peer_id)
                await sock.receive()  # the node closes it once it has our identity
        finally:
            await sock.aclose()
    with anyio.fail_after(WAIT):
        while node.host.stats["handshake_failures"] < 20:
            await anyio.sleep(0.01)
    refusals = [r.getMessage() for r in caplog.records if "inbound handshake failed" in r.getMessage()]
    assert len(refusals) == 20 and all(reason in m and "signature" not in m for m in refusals), refusals[:1]
    assert node.host.stats["internal_errors"] == 0
    await assert_answered(honest, node)


# -- liveness -----------------------------------------------------------------

LIVELY = HostLimits(keepalive_interval=0.3, write_timeout=0.5)


async def _raw_peer(server: Host) -> tuple[tcp.TcpStream, Upgraded, PeerId]:
    """A secured connection to ``server`` that nobody reads or writes after the handshake,
    and the peer id it has."""
    host, port = multiaddrs.tcp_endpoint(server.listen_addrs[0])
    sock = await tcp.connect(host, port)
    identity = PrivateKey.generate()
    return sock, await upgrade(sock, identity, True, server.peer_id), identity.peer_id()


async def test_a_peer_that_vanishes_is_closed_by_the_keepalive() -> None:
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=LIVELY) as server:
        sock, _, peer = await _raw_peer(server)
        try:
            with anyio.fail_after(WAIT):
                while server.connection(peer) is None:
                    await anyio.sleep(0.01)
                while not server.stats["keepalive_timeouts"]:  # no pong ever comes
                    await anyio.sleep(0.05)
        finally:
            await sock.aclose()
        assert server.connection(peer) is None


async def test_a_peer_that_stops_reading_is_closed_by_the_write_timeout() -> None:
    flood = "/test/flood/1.0.0"

    async def send_forever(stream: Stream) -> None:
        chunk = b"\xaa" * 65536
        for _ in range(100_000):
            await stream.send(chunk)

    no_keepalive = HostLimits(keepalive_interval=600, write_timeout=0.5)  # only the write stall can end it
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=no_keepalive) as server:
        server.set_handler(flood, send_forever)
        sock, upgraded, peer = await _raw_peer(server)
        try:
            muxer = yamux.YamuxConnection(is_client=True)
            select = b"".join(varint.encode(len(p)) + p for p in (b"/multistream/1.0.0\n", flood.encode() + b"\n"))
            for _ in range(100):  # 100 windows of 256 KiB: more than the kernel's buffers hold
                muxer.send_data(muxer.open_stream(), select)
            await sock.send(upgraded.transport.encrypt(muxer.data_to_send()))
            with anyio.fail_after(WAIT):  # ... and never reads again
                while not server.stats["write_stalls"]:
                    await anyio.sleep(0.05)
        finally:
            await sock.aclose()
        assert server.connection(peer) is None


async def test_a_dead_connection_is_noticed_and_the_peer_redialled_on_demand() -> None:
    """We dial a peer that then freezes (answers nothing); the keep-alive closes the
    connection, and the next request dials the peer again."""
    frozen_identity = PrivateKey.generate()
    accepted = 0
    async with anyio.create_task_group() as tg:

        async def freeze(sock: tcp.TcpStream) -> None:
            nonlocal accepted
            await upgrade(sock, frozen_identity, False, None)
            accepted += 1
            await anyio.sleep_forever()  # never reads, never answers

        listener = await tcp.listen("127.0.0.1", 0, lambda sock: tg.start_soon(freeze, sock))
        port = listener.sockets[0].getsockname()[1]
        peer = PeerInfo(frozen_identity.peer_id(), (multiaddrs.from_tcp_endpoint("127.0.0.1", port).to_bytes(),))
        try:
            async with Host(PrivateKey.generate(), limits=LIVELY) as client:
                with anyio.fail_after(WAIT):
                    first = await client.connect(peer)
                    while not client.stats["keepalive_timeouts"]:
                        await anyio.sleep(0.05)
                    assert client.connection(peer.peer_id) is None
                    second = await client.connect(peer)
                    while accepted < 2:  # the frozen peer's side of the second handshake
                        await anyio.sleep(0.01)
                assert second is not first and not second.closed
        finally:
            listener.close()
            tg.cancel_scope.cancel()


async def test_a_quiet_honest_connection_answers_the_keepalive_and_stays(node: Node) -> None:
    async with Host(PrivateKey.generate(), [f"/ip4/{HONEST_IP}/tcp/0"], limits=LIVELY) as quiet_peer:
        conn = await quiet_peer.connect(target(node))
        await anyio.sleep(2.0)  # several keep-alive rounds
        assert quiet_peer.connection(node.peer_id) is conn and quiet_peer.stats["keepalive_timeouts"] == 0


async def test_a_request_from_a_task_a_stream_handler_started_is_not_charged_to_that_stream(node: Node) -> None:
    """Frame memory is reserved in the scope of the stream that carries the frame, never
    in that of an inbound stream whose handler happened to start the task."""
    trigger = "/test/trigger/1.0.0"
    replies: list[Message] = []
    stream_gone = anyio.Event()
    async with Host(PrivateKey.generate(), [f"/ip4/{HONEST_IP}/tcp/0"]) as peer, Host(PrivateKey.generate()) as other:
        messenger = LibP2PKadMessenger(peer)

        async def later() -> None:
            await stream_gone.wait()
            replies.append(await messenger.request(target(node), Message(MessageType.FIND_NODE, key=b"k" * 32)))

        async def handle(stream: Stream) -> None:
            peer.start_soon(later)

        peer.set_handler(trigger, handle)
        stream = await other.new_stream(PeerInfo(peer.peer_id, tuple(peer.advertised_addrs())), [trigger])
        with anyio.fail_after(WAIT):
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()  # the handler returned and its stream closed
            await stream.aclose()
            stream_gone.set()
            while not replies:
                await anyio.sleep(0.01)
        assert replies[0].type is MessageType.FIND_NODE
