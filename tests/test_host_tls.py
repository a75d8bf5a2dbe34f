"""Hosts choosing their connection security over loopback TCP: TLS and Noise both
ways, in the order each host proposes them, and hostile TLS handshakes counted and
dropped without harm to the host."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
import pytest
from anyio.abc import SocketStream
from certs import build
from OpenSSL import SSL
from test_host import ECHO, addr_of, echo

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.network import multiaddrs
from dhtstore.network.host import DialError, Host
from dhtstore.network.multistream import MultistreamDialer, ProtocolAgreed

pytestmark = pytest.mark.anyio

TLS, NOISE = "/tls/1.0.0", "/noise"


@pytest.mark.parametrize(
    ("dialler", "listener", "agreed"),
    [
        (["tls"], ["tls"], TLS),
        (["noise", "tls"], ["tls"], TLS),  # /noise refused, then /tls/1.0.0
        (["tls", "noise"], ["noise", "tls"], TLS),  # the dialler's order wins
        (["noise", "tls"], ["tls", "noise"], NOISE),
        (["tls"], ["noise", "tls"], TLS),
        (["noise"], ["tls", "noise"], NOISE),
    ],
)
async def test_the_first_security_the_dialler_proposes_that_the_listener_has_is_used(
    dialler: Sequence[str], listener: Sequence[str], agreed: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dhtstore.network")
    key = PrivateKey.generate(KeyType.Secp256k1)
    async with (
        Host(key, ["/ip4/127.0.0.1/tcp/0"], security=listener) as server,
        Host(PrivateKey.generate(), security=dialler) as client,
    ):
        server.set_handler(ECHO, echo)
        stream = await client.new_stream(addr_of(server), [ECHO])
        await stream.send(b"secured")
        assert await stream.receive() == b"secured"
        conn = client.connection(server.peer_id)
        assert conn is not None and conn.security == agreed and conn.early_muxer
        assert conn.remote_public_key.key_type is KeyType.Secp256k1
        name = "tls" if agreed == TLS else "noise"
        with anyio.fail_after(5):
            while server.stats[f"secured_{name}"] != 1:
                await anyio.sleep(0.01)
        assert client.stats[f"secured_{name}"] == 1 and client.stats["connections_opened"] == 1
        assert server.connection(client.peer_id).security == agreed  # type: ignore[union-attr]
        assert await client.ping(server.peer_id) >= 0
        assert await server.ping(client.peer_id) >= 0  # the listener uses the connection too
    assert f"secured with {name} to {server.peer_id} (outbound)" in caplog.text


async def test_no_common_security_is_a_dial_error_and_a_counted_failure() -> None:
    async with (
        Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], security=["tls"]) as server,
        Host(PrivateKey.generate(), security=["noise"]) as client,
    ):
        with pytest.raises(DialError):
            await client.connect(addr_of(server))
        with anyio.fail_after(5):
            while server.stats["handshake_failures"] != 1:
                await anyio.sleep(0.01)


async def test_tls_checks_the_dialled_peer_id() -> None:
    async with (
        Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], security=["tls"]) as server,
        Host(PrivateKey.generate(), security=["tls"]) as client,
    ):
        wrong = str(multiaddrs.with_peer_id(server.listen_addrs[0], PrivateKey.generate().peer_id()))
        with pytest.raises(DialError, match="not the dialled"):
            await client.connect(wrong)


@pytest.mark.parametrize("names", [[], ["quic"], ["tls", "tls"]])
def test_a_bad_security_list_is_refused(names: list[str]) -> None:
    with pytest.raises(ValueError, match="security"):
        Host(PrivateKey.generate(), security=names)


async def _hostile_tls_client(port: int, send_tls: Callable[[SocketStream], Awaitable[None]]) -> None:
    """Agree /tls/1.0.0 by multistream on a raw socket, then run ``send_tls(sock)``."""
    async with await anyio.connect_tcp("127.0.0.1", port) as sock:
        dialer = MultistreamDialer([TLS])
        await sock.send(dialer.data_to_send())
        with anyio.fail_after(5):
            while not isinstance(dialer.next_event(), ProtocolAgreed):
                dialer.receive_data(await sock.receive())
        await send_tls(sock)
        with anyio.fail_after(5):
            try:
                while await sock.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass


async def garbage(sock: SocketStream) -> None:
    await sock.send(b"\x16\x03\x01\x00\x05hello" + b"\xff" * 100)


async def hello_then_garbage(sock: SocketStream) -> None:
    conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    await sock.send(conn.bio_read(65536) + b"\x17\x03\x03\x00\x10" + b"\x00" * 16)


async def no_extension(sock: SocketStream) -> None:
    """A full TLS 1.3 client whose certificate lacks the libp2p extension."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    key, cert = build(PrivateKey.generate(), with_extension=False)
    ctx.use_privatekey(key)
    ctx.use_certificate(cert)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    ctx.set_alpn_protos([b"libp2p"])
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    with anyio.fail_after(5):
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                await sock.send(conn.bio_read(65536))
                conn.bio_write(await sock.receive())
    await sock.send(conn.bio_read(65536))


async def test_hostile_tls_handshakes_are_counted_failures_and_the_host_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="dhtstore.network")
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server:
        server.set_handler(ECHO, echo)
        _, port = multiaddrs.tcp_endpoint(server.listen_addrs[0])
        for attempt in (garbage, hello_then_garbage, no_extension):
            await _hostile_tls_client(port, attempt)
        with anyio.fail_after(5):
            while server.stats["handshake_failures"] < 3:
                await anyio.sleep(0.01)
        assert server.stats["handshake_failures"] == 3 and server.connected_peers() == []
        async with Host(PrivateKey.generate(), security=["tls"]) as client:
            stream = await client.new_stream(addr_of(server), [ECHO])
            await stream.send(b"still here")
            assert await stream.receive() == b"still here"
    failures = [r.getMessage() for r in caplog.records if "inbound handshake failed" in r.getMessage()]
    assert len(failures) == 3 and all("TlsError" in f for f in failures), failures
    assert "lacks the libp2p public key extension" in failures[2]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "inbound handshake failed" in r.getMessage())
    assert server.stats["internal_errors"] == 0
