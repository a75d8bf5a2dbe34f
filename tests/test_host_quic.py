"""Hosts over QUIC v1 on loopback UDP: streams, ping and identify both ways for each
key type, kad nodes providing and finding over QUIC only, QUIC preferred to TCP, and
hostile QUIC input (bad certificates, a dialled id that does not match, garbage
datagrams, an Initial flood from one address) refused, counted, and harmless."""

from __future__ import annotations

import collections
import os
import shutil
import socket
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from certs import build
from test_host import ECHO, addr_of, echo

from dhtstore import multihash
from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.data.engine import default_store_url
from dhtstore.network import multiaddrs, quic
from dhtstore.network.host import DialError, Host
from dhtstore.network.limits import HostLimits
from dhtstore.network.resources import ResourceLimits, ResourceManager, ScopeLimits
from dhtstore.node import Node
from dhtstore.types import PeerInfo

pytestmark = pytest.mark.anyio

QUIC_LISTEN = "/ip4/127.0.0.1/udp/0/quic-v1"
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


@pytest.mark.parametrize("key_type", [KeyType.Ed25519, KeyType.Secp256k1, KeyType.RSA])
async def test_two_hosts_talk_over_quic_both_ways(key_type: KeyType) -> None:
    identified: list[Any] = []
    async with (
        Host(PrivateKey.generate(key_type), [QUIC_LISTEN]) as server,
        Host(PrivateKey.generate(key_type), [QUIC_LISTEN]) as client,
    ):
        server.set_handler(ECHO, echo)
        client.set_handler(ECHO, echo)
        client.on_identify(lambda peer, info: identified.append((peer, info)))
        stream = await client.new_stream(addr_of(server), [ECHO])
        payload = os.urandom(3 * 1024 * 1024)  # past a window and the send buffer
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send, payload)
            got = bytearray()
            while len(got) < len(payload):
                got += await stream.receive()
        assert bytes(got) == payload
        await stream.aclose()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()  # the echo handler returned: its FIN

        conn = client.connection(server.peer_id)
        assert conn is not None and conn.security == quic.PROTOCOL_ID and conn.early_muxer
        assert conn.remote_public_key.key_type is key_type
        assert multiaddrs.is_quic(conn.remote_addr)
        assert await client.ping(server.peer_id) >= 0
        assert await server.ping(client.peer_id) >= 0  # the listener uses the connection too
        back = await server.new_stream(client.peer_id, [ECHO])  # and opens streams on it
        await back.send(b"back")
        assert await back.receive() == b"back"
        await back.aclose()

        await wait_until(lambda: identified)
        peer, info = identified[0]
        assert peer == server.peer_id and info.agent_version.startswith("dhtstore/")
        assert server.listen_addrs[0].to_bytes() in info.listen_addrs
        assert ECHO in info.protocols
        assert client.stats["secured_quic"] == 1 and client.stats["connections_opened"] == 1
        await wait_until(lambda: server.stats["secured_quic"] == 1)
        assert server.stats["connections_opened"] == 1 and server.stats["inbound_quic_initials"] == 1
        assert client.connected_peers() == [server.peer_id]
    assert server.resource_usage() == {} and client.resource_usage() == {}


async def test_the_dial_goes_out_from_the_listen_port() -> None:
    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server, Host(PrivateKey.generate(), [QUIC_LISTEN]) as client:
        await client.connect(addr_of(server))
        await wait_until(lambda: server.connection(client.peer_id) is not None)
        seen = server.connection(client.peer_id)
        assert seen is not None and seen.remote_addr == client.listen_addrs[0]


async def test_quic_is_dialled_before_tcp_and_tcp_is_the_fallback() -> None:
    async with (
        Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0", QUIC_LISTEN]) as server,
        Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as client,
    ):
        tcp_addr, quic_addr = (a.to_bytes() for a in server.listen_addrs)
        conn = await client.connect(PeerInfo(server.peer_id, (tcp_addr, quic_addr)))
        assert conn.security == quic.PROTOCOL_ID
        await conn.close()
        # A QUIC address nobody answers on: the dial falls back to TCP.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            dead = multiaddrs.from_quic_endpoint("127.0.0.1", silent.getsockname()[1]).to_bytes()
            fast = Host(PrivateKey.generate(), limits=HostLimits(dial_timeout=1.0))
            async with fast:
                conn = await fast.connect(PeerInfo(server.peer_id, (tcp_addr, dead)))
                assert conn.security in ("/noise", "/tls/1.0.0")
        assert server.advertised_addrs() == [tcp_addr, quic_addr]


async def test_kad_nodes_provide_and_find_over_quic_only(_sqlite_template: Path, tmp_path: Path, loopback_options: Any) -> None:
    def store() -> str:
        directory = tmp_path / f"store{len(list(tmp_path.iterdir()))}"
        directory.mkdir()
        shutil.copyfile(_sqlite_template, directory / "dhtstore.db")
        return default_store_url(directory)

    async with AsyncExitStack() as stack:
        def start(bootstrap: list[str], **kw: Any) -> Any:
            options = loopback_options(store(), bootstrap, listen=[QUIC_LISTEN], **kw)
            return stack.enter_async_context(Node.start(options))

        a = await start([], identity=PrivateKey.generate(KeyType.Secp256k1))
        b = await start([a.addresses()[0]], identity=PrivateKey.generate(KeyType.RSA))
        c = await start([a.addresses()[0]])
        await wait_until(lambda: b.peer_id in a.table and c.peer_id in a.table)
        await b.closest_peers(b.peer_id.to_bytes())  # FIND_NODE over QUIC: b learns c through a
        await wait_until(lambda: c.peer_id in b.table)
        assert await c.provide_once(CID) >= 1
        mh = multihash.from_cid(CID)
        with anyio.fail_after(10):
            while not await a.providers.get_providers(mh):
                await anyio.sleep(0.05)
        found = await b.find_providers(CID)
        assert [p.peer_id for p in found] == [c.peer_id]
        assert any(multiaddrs.is_quic(multiaddrs.parse(x)) for x in found[0].addrs)
        located = await b.find_peer(c.peer_id)
        assert located.peer_id == c.peer_id
        for node in (a, b, c):
            conns = [node.host.connection(p) for p in node.host.connected_peers()]
            assert conns and all(x is not None and x.security == quic.PROTOCOL_ID for x in conns)


# -- hostile input ----------------------------------------------------------------------


class _ClientWith(quic.QuicTransport):
    """A QUIC client presenting a certificate of the test's choosing (or none)."""

    def __init__(self, certificate: Any) -> None:
        async def unused(stream: Any) -> None:
            await stream.reset()

        super().__init__(PrivateKey.generate(), max_streams=8, on_inbound_stream=unused)
        self._chosen = certificate

    def configuration(self, *, is_client: bool) -> QuicConfiguration:
        config = super().configuration(is_client=is_client)
        config.private_key, config.certificate = self._chosen if self._chosen is not None else (None, None)
        return config


async def _raw_dial(server: Host, transport: quic.QuicTransport) -> None:
    endpoint = await quic.open_endpoint(transport, collections.Counter(), "127.0.0.1", 0)
    try:
        host, port = multiaddrs.quic_endpoint(server.listen_addrs[0])
        conn = endpoint.dial(host, port, server.peer_id, ResourceManager().open_outbound())
        with anyio.move_on_after(3):
            try:
                await conn.handshake()  # a TLS 1.3 client may finish before the server refuses it
                await anyio.sleep(0.2)
            except quic.QuicError:
                pass
        conn.abort()
    finally:
        endpoint.close()


@pytest.mark.parametrize(
    "make_cert",
    [
        pytest.param(lambda key: None, id="no certificate"),
        pytest.param(lambda key: build(key, with_extension=False), id="no libp2p extension"),
        pytest.param(lambda key: build(key, host_key_signs=b"something else"), id="bad host-key signature"),
        pytest.param(lambda key: build(key, signed_key=b"\x30\x03\x04\x01\x00"), id="malformed extension"),
    ],
)
async def test_a_client_certificate_that_does_not_authenticate_a_peer_is_refused(make_cert: Any) -> None:
    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server:
        await _raw_dial(server, _ClientWith(make_cert(PrivateKey.generate())))
        await wait_until(lambda: server.stats["handshake_failures"] == 1)
        assert server.connected_peers() == []
        await wait_until(lambda: server.resource_usage() == {})
        async with Host(PrivateKey.generate()) as good:  # the listener still serves
            assert await good.ping(addr_of(server)) >= 0


async def test_a_server_that_is_not_the_dialled_peer_is_refused() -> None:
    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server, Host(PrivateKey.generate()) as client:
        wrong = multiaddrs.with_peer_id(server.listen_addrs[0], PrivateKey.generate().peer_id())
        with pytest.raises(DialError, match="peer id mismatch"):
            await client.connect(str(wrong))
        assert client.connected_peers() == [] and client.resource_usage() == {}
        await wait_until(lambda: server.stats["handshake_failures"] == 1)  # our refusal reached it
        assert await client.ping(addr_of(server)) >= 0


async def test_a_server_certificate_without_the_extension_is_refused() -> None:
    class _ServerWith(quic.QuicTransport):
        def configuration(self, *, is_client: bool) -> QuicConfiguration:
            config = super().configuration(is_client=is_client)
            if not is_client:
                config.private_key, config.certificate = build(self.identity, with_extension=False)
            return config

    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server, Host(PrivateKey.generate()) as client:
        server._quic.__class__ = _ServerWith
        with pytest.raises(DialError, match="lacks the libp2p public key extension"):
            await client.connect(addr_of(server))
        assert client.connected_peers() == []


async def test_garbage_datagrams_are_dropped_and_counted() -> None:
    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server:
        host, port = multiaddrs.quic_endpoint(server.listen_addrs[0])
        garbage = [
            b"",
            b"\x00",
            os.urandom(1300),  # a short header for no connection we know, or malformed
            b"\xc0\x00\x00\x00\x01" + b"\xff" * 40,  # a long header whose lengths run off its end
            b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00" * 1200,  # Initial, garbage inside
            b"\xc0\xba\xba\xba\xba\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00" * 1200,  # unknown version
            b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00" * 100,  # Initial too small
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(20):
                for datagram in garbage:
                    sock.sendto(datagram, (host, port))
            await wait_until(
                lambda: server.stats["quic_malformed_datagrams"] + server.stats["quic_dropped_datagrams"] == 20 * len(garbage)
            )
        # Not one left state behind: the Initial whose content does not decrypt included.
        assert server.resource_usage() == {} and server.stats["handshake_timeouts"] == 0
        assert server.stats["internal_errors"] == 0 and server.connected_peers() == []
        async with Host(PrivateKey.generate()) as good:
            assert await good.ping(addr_of(server)) >= 0


async def test_an_initial_flood_from_one_address_is_bounded_by_the_handshake_limits() -> None:
    limits = HostLimits(resources=ResourceLimits(ip=ScopeLimits(inbound_connections=100, handshakes=4)))
    async with Host(PrivateKey.generate(), [QUIC_LISTEN], limits=limits) as server:
        host, port = multiaddrs.quic_endpoint(server.listen_addrs[0])
        flood = quic.QuicTransport(PrivateKey.generate(), max_streams=1, on_inbound_stream=echo)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for _ in range(50):  # 50 new connections, never completed: each a fresh Initial
                client = QuicConnection(configuration=flood.configuration(is_client=True))
                client.connect((host, port), now=0.0)
                for datagram, _ in client.datagrams_to_send(now=0.0):
                    sock.sendto(datagram, (host, port))
            await wait_until(lambda: server.stats["inbound_quic_initials"] + server.stats["quic_dropped_datagrams"] >= 50)
        assert server.stats["limit_ip_handshakes"] >= 46 and server.stats["refused_connections"] >= 46
        assert server.resource_usage().get("handshakes", 0) <= 4
        # Another address is not held up (per-IP limits), and the flood's half-open
        # connections time out.
        async with Host(PrivateKey.generate(), ["/ip4/127.0.0.2/udp/0/quic-v1"]) as good:
            assert await good.ping(addr_of(server)) >= 0
        assert server.stats["internal_errors"] == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_quic_over_ipv6() -> None:
    listen = "/ip6/::1/udp/0/quic-v1"
    async with Host(PrivateKey.generate(), [listen]) as server, Host(PrivateKey.generate(), [listen]) as client:
        server.set_handler(ECHO, echo)
        assert str(server.listen_addrs[0]).startswith("/ip6/::1/udp/")
        stream = await client.new_stream(addr_of(server), [ECHO])
        await stream.send(b"over ipv6")
        assert await stream.receive() == b"over ipv6"
        assert await server.ping(client.peer_id) >= 0
        seen = server.connection(client.peer_id)
        assert seen is not None and seen.remote_addr == client.listen_addrs[0]  # from the listen port


async def test_data_nobody_reads_is_bounded_per_stream_and_per_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quic, "MAX_STREAM_BUFFER", 256 * 1024)
    monkeypatch.setattr(quic, "MAX_CONNECTION_BUFFER", 600 * 1024)
    stalled = anyio.Event()

    async def never_reads(stream: Any) -> None:
        await stalled.wait()

    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server, Host(PrivateKey.generate()) as client:
        server.set_handler("/test/stall/1.0.0", never_reads)
        stream = await client.new_stream(addr_of(server), ["/test/stall/1.0.0"])
        with pytest.raises(anyio.BrokenResourceError):  # reset past 256 KiB unread
            with anyio.fail_after(20):
                for _ in range(64):
                    await stream.send(b"x" * 32 * 1024)
                    await anyio.sleep(0.01)
        conn = server.connection(client.peer_id)
        assert conn is not None and not conn.closed and conn.protocol_errors == 1
        assert await client.ping(server.peer_id) >= 0  # the connection lives on
        # Three streams of 240 KiB each, none over its limit: 720 KiB unread in all.
        streams = [await client.new_stream(server.peer_id, ["/test/stall/1.0.0"]) for _ in range(3)]
        with anyio.fail_after(20):
            try:
                for s in streams:
                    for _ in range(8):
                        await s.send(b"y" * 30 * 1024)
                        await anyio.sleep(0.01)
            except anyio.BrokenResourceError:
                pass
            await wait_until(lambda: server.connection(client.peer_id) is None)
        await wait_until(lambda: server.stats["connection_protocol_errors"] == 2)
        stalled.set()


async def test_a_reply_carries_the_ack_of_its_request_and_the_next_request_that_of_the_reply() -> None:
    """aioquic acks a packet only once its ack delay has passed; a reply written sooner
    goes out with the ack anyway (Connection._transmit), and the ack of the reply waits
    (ACK_DELAY) for the next request to carry it, so an exchange is one datagram each
    way and not a second one from each side once the delay runs out."""
    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server, Host(PrivateKey.generate()) as client:
        server.set_handler(ECHO, echo)
        stream = await client.new_stream(addr_of(server), [ECHO])
        await stream.send(b"warm")
        assert await stream.receive() == b"warm"
        await anyio.sleep(0.1)  # the acks of the negotiation and of identify are out
        sent: dict[str, list[int]] = {"server": [], "client": []}
        for who, endpoint in (("server", server._quic_listeners[0]), ("client", client._quic_dialers[4])):
            endpoint.send = _counting(endpoint.send, sent[who])  # type: ignore[method-assign]
        for i in range(50):
            await stream.send(b"request %d" % i)
            assert await stream.receive() == b"request %d" % i
            await anyio.sleep(0.003)  # past aioquic's 1 ms: a separate ack would be out by now
        # 100 each if each ack went alone; a probe or an ack alone more if the machine stalls.
        assert len(sent["server"]) <= 50 + 5, sent
        assert len(sent["client"]) <= 50 + 5, sent
        conn = server.connection(client.peer_id)
        assert isinstance(conn, quic.Connection)
        assert conn._quic._ack_delay == quic.ACK_DELAY  # the private state written
        assert hasattr(conn._quic._spaces[quic.tls.Epoch.ONE_RTT], "ack_at")


def _counting(send: Any, log: list[int]) -> Any:
    def counting_send(data: bytes, addr: Any) -> None:
        log.append(len(data))
        send(data, addr)

    return counting_send


async def test_data_is_acked_after_two_datagrams_without_waiting_for_the_ack_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quic, "ACK_DELAY", 5.0)  # were it waited for, the test would time out
    stalled = anyio.Event()

    async def reads_without_reply(stream: Any) -> None:
        try:
            while True:
                await stream.receive()
        except anyio.EndOfStream:
            await stalled.wait()

    async with Host(PrivateKey.generate(), [QUIC_LISTEN]) as server, Host(PrivateKey.generate()) as client:
        server.set_handler("/test/sink/1.0.0", reads_without_reply)
        stream = await client.new_stream(addr_of(server), ["/test/sink/1.0.0"])
        assert isinstance(stream, quic.Stream)
        for _ in range(3):
            await stream.send(os.urandom(20_000))  # 17 datagrams or so, nothing comes back
            with anyio.fail_after(2):
                while stream.connection._unacked(stream.stream_id):
                    await anyio.sleep(0.01)
        stalled.set()


async def test_quic_keepalive_keeps_a_quiet_connection_and_closes_a_vanished_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection's loop timer, not a task, sends the keep-alive PING and runs
    aioquic's idle timeout."""
    monkeypatch.setattr(quic, "IDLE_TIMEOUT", 1.0)
    lively = HostLimits(keepalive_interval=0.2)
    async with (
        Host(PrivateKey.generate(), [QUIC_LISTEN], limits=lively) as server,
        Host(PrivateKey.generate(), limits=lively) as client,
    ):
        conn = await client.connect(addr_of(server))
        await anyio.sleep(2.0)  # twice the idle timeout, nothing sent but the PINGs
        assert client.connection(server.peer_id) is conn and not conn.closed
        assert server.connection(client.peer_id) is not None
        assert server.stats["keepalive_timeouts"] == client.stats["keepalive_timeouts"] == 0
        for endpoint in client._quic_dialers.values():  # the client vanishes without a word
            endpoint.close()
        with anyio.fail_after(10):
            while server.connection(client.peer_id) is not None:
                await anyio.sleep(0.05)
        await wait_until(lambda: server.stats["keepalive_timeouts"] == 1)
