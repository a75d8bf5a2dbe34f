"""The libp2p host over loopback TCP: dialling, streams, identify, limits, shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from dhtstore.crypto.keys import PrivateKey
from dhtstore.errors import NetworkError
from dhtstore.network import multiaddrs
from dhtstore.network.connection import Connection, Stream
from dhtstore.network.host import DialError, Host, HostLimits
from dhtstore.network.identify import IdentifyInfo
from dhtstore.network.security import SecureHandshake, start_handshake
from dhtstore.network.resources import ResourceLimits, ScopeLimits
from dhtstore.peerid import PeerId
from dhtstore.types import PeerInfo

pytestmark = pytest.mark.anyio

ECHO = "/test/echo/1.0.0"


async def echo(stream: Stream) -> None:
    try:
        while True:
            await stream.send(await stream.receive())
    except anyio.EndOfStream:
        pass


def addr_of(host: Host, index: int = 0) -> str:
    return str(multiaddrs.with_peer_id(host.listen_addrs[index], host.peer_id))


@pytest.fixture
async def hosts() -> AsyncIterator[list[Host]]:
    """Three running hosts on 127.0.0.1, each serving the echo protocol."""
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(3):
            host = await stack.enter_async_context(Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]))
            host.set_handler(ECHO, echo)
            out.append(host)
        yield out


async def test_listens_on_ip4_and_ip6_and_dials_both() -> None:
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"]) as server:
        server.set_handler(ECHO, echo)
        assert [str(a).split("/")[1] for a in server.listen_addrs] == ["ip4", "ip6"]
        for index in (0, 1):
            async with Host(PrivateKey.generate()) as client:
                stream = await client.new_stream(addr_of(server, index), [ECHO])
                await stream.send(b"hello")
                assert await stream.receive() == b"hello"
                conn = client.connection(server.peer_id)
                assert conn is not None and conn.remote_addr == server.listen_addrs[index]


async def test_dial_checks_the_peer_id_in_the_address(hosts: list[Host]) -> None:
    a, b, c = hosts
    wrong = str(multiaddrs.with_peer_id(b.listen_addrs[0], c.peer_id))
    with pytest.raises(DialError, match="not the dialled"):
        await a.connect(wrong)
    with pytest.raises(DialError, match="/p2p/"):
        await a.connect(str(b.listen_addrs[0]))
    assert a.connection(b.peer_id) is None and a.connection(c.peer_id) is None


async def test_concurrent_dials_share_one_connection(hosts: list[Host]) -> None:
    a, b, _ = hosts
    conns: list[Connection] = []
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(lambda: _append(conns, a.connect(addr_of(b))))
    assert len({id(c) for c in conns}) == 1
    assert b.stats["inbound_sockets"] == 1


async def _append(out: list[Connection], awaitable: Awaitable[Connection]) -> None:
    out.append(await awaitable)


async def test_simultaneous_dials_both_ways_settle_on_one_connection(hosts: list[Host]) -> None:
    a, b, _ = hosts
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.connect, addr_of(b))
        tg.start_soon(b.connect, addr_of(a))
    with anyio.fail_after(5):
        while True:
            ca, cb = a.connection(b.peer_id), b.connection(a.peer_id)
            if ca and cb and not ca.closed and not cb.closed and ca.initiator != cb.initiator:
                break
            await anyio.sleep(0.01)
    stream = await a.new_stream(b.peer_id, [ECHO])
    await stream.send(b"x")
    assert await stream.receive() == b"x"


async def test_stream_negotiates_the_first_protocol_the_peer_accepts(hosts: list[Host]) -> None:
    a, b, _ = hosts
    stream = await a.new_stream(addr_of(b), ["/test/unknown/1.0.0", ECHO])
    assert stream.protocol == ECHO
    with pytest.raises(NetworkError, match="did not accept"):
        await a.new_stream(b.peer_id, ["/test/unknown/1.0.0"])


async def test_one_mebibyte_through_one_stream_with_back_pressure(hosts: list[Host]) -> None:
    a, b, _ = hosts
    stream = await a.new_stream(addr_of(b), [ECHO])
    payload = bytes(range(256)) * 4096  # 1 MiB, more than four yamux windows
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(payload):
            received.extend(await stream.receive())

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_all)
            await stream.send(payload)
    assert received == payload
    await stream.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()  # the echo handler returns: its side closes too


async def test_a_failing_handler_resets_its_stream_only(hosts: list[Host], caplog: pytest.LogCaptureFixture) -> None:
    a, b, _ = hosts

    async def broken(stream: Stream) -> None:
        raise RuntimeError("handler bug")

    b.set_handler("/test/broken/1.0.0", broken)
    stream = await a.new_stream(addr_of(b), ["/test/broken/1.0.0"])
    with pytest.raises(anyio.BrokenResourceError):
        await stream.receive()
    assert b.stats["handler_errors"] == 1
    echo_stream = await a.new_stream(b.peer_id, [ECHO])  # same connection still fine
    await echo_stream.send(b"ok")
    assert await echo_stream.receive() == b"ok"
    assert a.connection(b.peer_id) is not None


async def test_identify_both_ways_with_protocols_and_listen_addrs(hosts: list[Host]) -> None:
    a, b, _ = hosts
    seen: dict[str, IdentifyInfo] = {}
    got_both = anyio.Event()

    def record(name: str) -> Callable[[PeerId, IdentifyInfo], None]:
        def callback(peer: PeerId, info: IdentifyInfo) -> None:
            seen[name] = info
            if len(seen) == 2:
                got_both.set()

        return callback

    a.on_identify(record("a"))
    b.on_identify(record("b"))
    await a.connect(addr_of(b))
    with anyio.fail_after(5):
        await got_both.wait()
    assert seen["a"].peer_id == b.peer_id and seen["b"].peer_id == a.peer_id
    assert set(seen["a"].protocols) == set(b.protocols) and ECHO in seen["a"].protocols
    assert seen["a"].listen_addrs == tuple(x.to_bytes() for x in b.listen_addrs)
    assert seen["b"].agent_version == a.agent_version
    assert a.peer_addrs(b.peer_id) == seen["a"].listen_addrs
    assert a.identify.info(b.peer_id) == seen["a"]


async def test_identify_push_when_protocols_change(hosts: list[Host]) -> None:
    a, b, _ = hosts
    updates: list[IdentifyInfo] = []
    changed = anyio.Event()

    def on_identify(peer: PeerId, info: IdentifyInfo) -> None:
        updates.append(info)
        if "/test/new/1.0.0" in info.protocols:
            changed.set()

    a.on_identify(on_identify)
    await a.connect(addr_of(b))
    with anyio.fail_after(5):
        while not updates:
            await anyio.sleep(0.01)
        b.set_handler("/test/new/1.0.0", echo)
        await changed.wait()
    b.remove_handler("/test/new/1.0.0")

    def still_advertised() -> bool:
        info = a.identify.info(b.peer_id)
        assert info is not None
        return "/test/new/1.0.0" in info.protocols

    with anyio.fail_after(5):
        while still_advertised():
            await anyio.sleep(0.01)


async def test_streams_past_the_limit_are_refused() -> None:
    limits = HostLimits(max_streams_per_connection=2)
    release = anyio.Event()

    async def hold(stream: Stream) -> None:
        await release.wait()

    server = Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits)
    server.set_handler("/test/hold/1.0.0", hold)  # before starting: no identify push to count
    async with server:
        async with Host(PrivateKey.generate()) as client:
            await client.connect(addr_of(server))

            def identifying() -> bool:
                if server.identify.info(client.peer_id) is None or client.identify.info(server.peer_id) is None:
                    return True
                conn = server.connection(client.peer_id)
                assert conn is not None
                return bool(conn.num_streams or conn._muxer.stream_ids)

            with anyio.fail_after(5):  # identify's streams (both ways) must be done first
                while identifying():
                    await anyio.sleep(0.01)
            held = [await client.new_stream(server.peer_id, ["/test/hold/1.0.0"]) for _ in range(2)]
            with pytest.raises(NetworkError):
                await client.new_stream(server.peer_id, ["/test/hold/1.0.0"])
            release.set()
            assert len(held) == 2


async def test_connections_past_the_limit_are_refused() -> None:
    limits = HostLimits(high_water=1, low_water=1, resources=ResourceLimits(system=ScopeLimits(inbound_connections=1)))
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits) as server:
        async with Host(PrivateKey.generate()) as first, Host(PrivateKey.generate()) as second:
            await first.connect(addr_of(server))
            with pytest.raises(DialError):
                await second.connect(addr_of(server))
            assert server.stats["refused_connections"] == 1


async def test_idle_connections_are_trimmed_to_the_low_water_mark() -> None:
    limits = HostLimits(high_water=2, low_water=1, idle_grace=0.0, trim_interval=0.05)
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits) as server:
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Host(PrivateKey.generate())) for _ in range(3)]
            for client in clients:
                await client.connect(addr_of(server))
            with anyio.fail_after(5):  # trimmed as soon as they are idle
                while len(server.connected_peers()) > limits.low_water:
                    await anyio.sleep(0.01)
            assert server.stats["trimmed_connections"] == 2
            await anyio.sleep(0.2)  # a few more trim rounds: at the low water mark, nothing more goes
            assert len(server.connected_peers()) == 1


async def test_a_silent_socket_is_dropped_after_the_first_byte_timeout() -> None:
    limits = HostLimits(first_byte_timeout=0.2)
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits) as server:
        host, port = multiaddrs.tcp_endpoint(server.listen_addrs[0])
        async with await anyio.connect_tcp(host, port) as sock:
            with anyio.fail_after(5):
                data = b""
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:  # the close, with nothing sent
                        data += await sock.receive()
        assert data == b""
        assert server.stats["silent_sockets_dropped"] == 1


async def test_after_1000_garbage_connections_a_real_peer_is_served(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    garbage = [b"", b"\xff" * 64, b"\x13/multistream/1.0.0\n\x07/noise\n" + b"\x00\x20" + b"\x00" * 32]
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server:
        server.set_handler(ECHO, echo)
        host, port = multiaddrs.tcp_endpoint(server.listen_addrs[0])
        for i in range(1000):
            async with await anyio.connect_tcp(host, port) as sock:
                if garbage[i % 3]:
                    await sock.send(garbage[i % 3])
                await sock.send_eof()
                reader = BufferedByteReceiveStream(sock)
                with anyio.fail_after(5):
                    try:
                        while await reader.receive():
                            pass
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass
        async with Host(PrivateKey.generate()) as client:
            stream = await client.new_stream(addr_of(server), [ECHO])
            await stream.send(b"still here")
            assert await stream.receive() == b"still here"
        failures = server.stats["handshake_failures"]
        assert failures == 1000
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_closing_the_host_closes_its_connections() -> None:
    gone = anyio.Event()
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server:
        server.on_disconnect(lambda peer: gone.set())
        async with Host(PrivateKey.generate()) as client:
            await client.connect(addr_of(server))
        with anyio.fail_after(5):
            await gone.wait()
        assert server.connected_peers() == []


async def test_new_stream_to_a_peer_info_uses_its_addresses(hosts: list[Host]) -> None:
    a, b, _ = hosts
    info = PeerInfo(b.peer_id, tuple(x.to_bytes() for x in b.listen_addrs))
    stream = await a.new_stream(info, [ECHO])
    await stream.send(b"hi")
    assert await stream.receive() == b"hi"
    with pytest.raises(DialError, match="no TCP or QUIC address"):
        await a.connect(PeerInfo(PrivateKey.generate().peer_id()))


async def test_a_handshake_stalled_midway_is_dropped_after_its_timeout() -> None:
    limits = HostLimits(handshake_timeout=0.2)
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits) as server:
        host, port = multiaddrs.tcp_endpoint(server.listen_addrs[0])
        async with await anyio.connect_tcp(host, port) as sock:
            # agree on /noise, then send half of the first Noise message and stall
            await sock.send(b"\x13/multistream/1.0.0\n\x07/noise\n\x00\x20" + b"\x01" * 16)
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:
                    await sock.receive()
        assert server.stats["handshake_timeouts"] == 1


async def test_a_stream_that_never_negotiates_is_reset() -> None:
    limits = HostLimits(negotiate_timeout=0.2)
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits) as server:
        async with Host(PrivateKey.generate()) as client:
            conn = await client.connect(addr_of(server))
            stream = await conn.open_stream()  # no multistream-select at all
            with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
                while True:
                    await stream.receive()
            assert server.stats["stream_negotiation_timeouts"] == 1
            assert client.connection(server.peer_id) is conn  # the connection stays


async def test_a_peer_that_dials_again_replaces_its_old_connection(hosts: list[Host]) -> None:
    a, b, _ = hosts
    old = await a.connect(addr_of(b))
    # b still holds old when a dials again with the same identity (as after a restart)
    async with Host(a.identity) as restarted:
        new = await restarted.connect(addr_of(b))
        with anyio.fail_after(5):
            while (kept := b.connection(a.peer_id)) is None or kept.remote_addr != new.local_addr:
                await anyio.sleep(0.01)
        stream = await restarted.new_stream(b.peer_id, [ECHO])
        await stream.send(b"again")
        assert await stream.receive() == b"again"
    assert old is not None


async def test_a_connection_from_our_own_identity_is_refused(hosts: list[Host]) -> None:
    a, _, _ = hosts
    async with Host(a.identity) as twin:
        with pytest.raises(DialError, match="ourselves"):
            await twin.connect(addr_of(a))
        # past that check (private call): a refuses the connection after the handshake
        conn = await twin._dial_addr(a.peer_id, a.listen_addrs[0].to_bytes())
        with anyio.fail_after(5):
            while not conn.closed:
                await anyio.sleep(0.01)
    assert a.stats["handshake_failures"] == 1 and a.connected_peers() == []


async def test_garbage_after_the_handshake_closes_only_that_connection(
    hosts: list[Host], caplog: pytest.LogCaptureFixture
) -> None:
    from dhtstore.network import tcp
    from dhtstore.network.connection import upgrade

    caplog.set_level(logging.INFO)
    a, b, _ = hosts
    host, port = multiaddrs.tcp_endpoint(b.listen_addrs[0])
    sock = await tcp.connect(host, port)
    upgraded = await upgrade(sock, PrivateKey.generate(), True, b.peer_id)
    await sock.send(upgraded.transport.encrypt(b"\x07" + b"\xff" * 11))  # yamux version 7
    with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
        while True:
            data = await sock.receive()
            upgraded.transport.receive_data(data)
            upgraded.transport.decrypt_available()  # the go-away, then the close
    await sock.aclose()
    stream = await a.new_stream(addr_of(b), [ECHO])  # b serves others as before
    await stream.send(b"fine")
    assert await stream.receive() == b"fine"
    assert b.stats["internal_errors"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_yamux_is_agreed_in_the_noise_handshake_or_else_by_multistream(
    hosts: list[Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dhtstore.network import connection

    a, b, c = hosts

    async def accepted(listener: Host) -> connection.Connection:
        with anyio.fail_after(5):  # the listener adds it once its side of the upgrade is done
            while (conn := listener.connection(a.peer_id)) is None:
                await anyio.sleep(0.01)
        return conn

    conn = await a.connect(addr_of(b))
    assert conn.early_muxer and (await accepted(b)).early_muxer  # one round trip saved
    # A dialer that offers no muxer in its handshake (an older peer): multistream picks yamux.
    def offering_none_when_dialing(
        protocol: str, identity: PrivateKey, initiator: bool, expected_peer: PeerId | None, stream_muxers: Sequence[str]
    ) -> SecureHandshake:
        return start_handshake(protocol, identity, initiator, expected_peer, () if initiator else stream_muxers)

    monkeypatch.setattr(connection, "start_handshake", offering_none_when_dialing)
    conn = await a.connect(addr_of(c))
    assert not conn.early_muxer and not (await accepted(c)).early_muxer
    stream = await a.new_stream(addr_of(c), [ECHO])
    await stream.send(b"either way")
    assert await stream.receive() == b"either way"


async def test_trimming_closes_connections_with_open_streams_but_spares_protected_and_busy_peers() -> None:
    # the grace lets all four connect and open their streams before any is trimmed
    limits = HostLimits(high_water=2, low_water=2, idle_grace=1.0, trim_interval=0.05)
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits) as server:
        server.set_handler(ECHO, echo)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Host(PrivateKey.generate())) for _ in range(4)]
            kept, busy = clients[0].peer_id, clients[1].peer_id
            server.protect_when(lambda peer: peer == kept)
            stack.enter_context(server.busy(busy))
            streams = [await c.new_stream(addr_of(server), [ECHO]) for c in clients]  # each holds a stream open
            with anyio.fail_after(5):
                while len(server.connected_peers()) > limits.low_water:
                    await anyio.sleep(0.01)
            assert set(server.connected_peers()) == {kept, busy}
            assert server.stats["trimmed_connections"] == 2
            await streams[0].send(b"still here")
            assert await streams[0].receive() == b"still here"
