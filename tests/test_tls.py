"""The TLS handshake and record layer in memory: two of ours, and ours against a bare
OpenSSL peer that sends what ours never would (two certificates, a bad certificate,
no certificate, no ALPN overlap, TLS 1.2), plus fuzzed input. Every refusal is a
TlsError (a ProtocolViolation)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from certs import build
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.errors import ProtocolViolation
from dhtstore.network.noise import HandshakeComplete
from dhtstore.network.sansio import NEED_DATA
from dhtstore.network.tls import TlsError, TlsHandshake
from dhtstore.network.tlscert import make_certificate

YAMUX = "/yamux/1.0.0"
CLIENT = PrivateKey.generate(KeyType.Ed25519)
SERVER = PrivateKey.generate(KeyType.Secp256k1)
FUZZ = settings(max_examples=100, deadline=None)


def handshake(client: TlsHandshake, server: TlsHandshake) -> None:
    """Pump bytes both ways until both are done (a TLS 1.3 handshake is 1.5 round trips)."""
    for _ in range(4):
        server.receive_data(client.data_to_send())
        server_event = server.next_event()
        client.receive_data(server.data_to_send())
        client_event = client.next_event()
        if server_event is not NEED_DATA and client_event is not NEED_DATA:
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize(
    ("client_muxers", "server_muxers", "agreed"),
    [([YAMUX], [YAMUX], YAMUX), ([], [YAMUX], None), ([YAMUX], [], None), (["/mplex/6.7.0", YAMUX], [YAMUX], YAMUX)],
)
def test_handshake_authenticates_both_and_agrees_the_muxer_through_alpn(
    client_muxers: list[str], server_muxers: list[str], agreed: str | None
) -> None:
    client = TlsHandshake(CLIENT, True, SERVER.peer_id(), client_muxers)
    server = TlsHandshake(SERVER, False, None, server_muxers)
    handshake(client, server)
    assert client.remote_peer == SERVER.peer_id() and server.remote_peer == CLIENT.peer_id()
    assert client.remote_public_key.key_type is KeyType.Secp256k1
    assert client.selected_muxer == server.selected_muxer == agreed
    # Records both ways, larger than one TLS record; bytes sent with the last handshake
    # flight carry over to the transport.
    sending, receiving = client.transport(), server.transport()
    receiving.receive_data(client.data_to_send() + sending.encrypt(b"x" * 100_000))
    assert receiving.decrypt_available() == b"x" * 100_000
    sending.receive_data(server.data_to_send() + receiving.encrypt(b"back"))
    assert sending.decrypt_available() == b"back"
    assert sending.decrypt_available() == b""


def test_the_dialled_peer_id_is_checked() -> None:
    client = TlsHandshake(CLIENT, True, PrivateKey.generate().peer_id(), [YAMUX])
    server = TlsHandshake(SERVER, False, None, [YAMUX])
    with pytest.raises(TlsError, match="not the dialled"):
        handshake(client, server)
    with pytest.raises(TlsError):  # and stays failed
        client.next_event()


def test_garbage_after_the_client_hello_is_refused() -> None:
    client = TlsHandshake(CLIENT, True, SERVER.peer_id(), [YAMUX])
    server = TlsHandshake(SERVER, False)
    server.receive_data(client.data_to_send() + b"\x17\x03\x03\x00\x05hello" + b"garbage" * 10)
    with pytest.raises(TlsError):
        for _ in range(3):
            server.next_event()


def test_a_corrupted_record_is_refused_by_the_transport() -> None:
    client = TlsHandshake(CLIENT, True, SERVER.peer_id(), [YAMUX])
    server = TlsHandshake(SERVER, False, None, [YAMUX])
    handshake(client, server)
    record = bytearray(client.data_to_send() + client.transport().encrypt(b"hello"))
    record[-3] ^= 0xFF
    server.transport().receive_data(bytes(record))
    with pytest.raises(TlsError):
        server.transport().decrypt_available()
    with pytest.raises(TlsError):
        server.transport().decrypt_available()


# -- a bare OpenSSL peer, configured to misbehave ------------------------------------


def bare_peer(
    server: bool,
    *,
    cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None,
    extra_chain: Sequence[x509.Certificate] = (),
    alpn: Sequence[bytes] = (b"libp2p",),
    max_version: int | None = None,
) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if cert is not None:
        ctx.use_privatekey(cert[0])
        ctx.use_certificate(cert[1])
    for extra in extra_chain:
        ctx.add_extra_chain_cert(extra)
    if server:
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        ctx.set_alpn_select_callback(lambda conn, offered: offered[-1])
    else:
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        if alpn:
            ctx.set_alpn_protos(list(alpn))
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state() if server else conn.set_connect_state()
    return conn


def pump_bare(ours: TlsHandshake, bare: SSL.Connection) -> None:
    """Drive ours against a bare OpenSSL peer until ours completes or raises."""
    for _ in range(4):
        try:
            bare.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:  # the bare peer gave up (it got our alert): ours must have raised
            pass
        ours.receive_data(_drain(bare))
        event = ours.next_event()
        bare.bio_write(ours.data_to_send())
        if isinstance(event, HandshakeComplete):
            return


def _drain(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


def test_a_bare_peer_with_a_good_certificate_is_accepted() -> None:
    """The bare peer is a fair libp2p peer when configured right: the cases below differ
    from this one in one thing each."""
    ours = TlsHandshake(SERVER, False)
    pump_bare(ours, bare_peer(False, cert=make_certificate(CLIENT)))
    assert ours.remote_peer == CLIENT.peer_id() and ours.selected_muxer is None


@pytest.mark.parametrize("we_are_server", [True, False])
def test_two_certificates_are_refused(we_are_server: bool) -> None:
    extra = make_certificate(PrivateKey.generate())[1]
    peer = CLIENT if we_are_server else SERVER
    bare = bare_peer(not we_are_server, cert=make_certificate(peer), extra_chain=[extra])
    ours = TlsHandshake(SERVER if we_are_server else CLIENT, not we_are_server, None if we_are_server else SERVER.peer_id())
    with pytest.raises(TlsError, match="2 certificates"):
        pump_bare(ours, bare)


@pytest.mark.parametrize("we_are_server", [True, False])
def test_a_certificate_without_the_extension_is_refused(we_are_server: bool) -> None:
    bare = bare_peer(not we_are_server, cert=build(CLIENT, with_extension=False))
    ours = TlsHandshake(SERVER if we_are_server else CLIENT, not we_are_server)
    with pytest.raises(TlsError, match="lacks the libp2p public key extension") as refused:
        pump_bare(ours, bare)
    assert isinstance(refused.value, ProtocolViolation)


def test_an_expired_certificate_is_refused() -> None:
    from certs import HOUR, NOW

    bare = bare_peer(False, cert=build(CLIENT, not_before=NOW - 48 * HOUR, not_after=NOW - HOUR))
    with pytest.raises(TlsError, match="expired"):
        pump_bare(TlsHandshake(SERVER, False), bare)


def test_a_client_without_a_certificate_is_refused() -> None:
    with pytest.raises(TlsError, match="handshake failed"):
        pump_bare(TlsHandshake(SERVER, False), bare_peer(False, cert=None))


def test_a_client_offering_no_protocol_we_know_in_alpn_is_refused() -> None:
    bare = bare_peer(False, cert=make_certificate(CLIENT), alpn=[b"h2", b"http/1.1"])
    with pytest.raises(TlsError, match="ALPN"):
        pump_bare(TlsHandshake(SERVER, False), bare)


def test_tls_1_2_is_refused() -> None:
    bare = bare_peer(False, cert=make_certificate(CLIENT), max_version=SSL.TLS1_2_VERSION)
    with pytest.raises(TlsError, match="handshake failed"):
        pump_bare(TlsHandshake(SERVER, False), bare)


def test_our_client_sends_no_sni() -> None:
    bare = bare_peer(True, cert=make_certificate(SERVER))
    ours = TlsHandshake(CLIENT, True, SERVER.peer_id(), [YAMUX])
    pump_bare(ours, bare)
    assert bare.get_servername() is None
    assert bare.get_alpn_proto_negotiated() == b"libp2p"  # it chose the last we offered
    assert ours.selected_muxer is None


# -- fuzz --------------------------------------------------------------------------


def client_hello() -> bytes:
    return TlsHandshake(CLIENT, True, None, [YAMUX]).data_to_send()


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)


def feed(machine: TlsHandshake, data: bytes) -> None:
    try:
        machine.receive_data(data)
        for _ in range(3):
            event = machine.next_event()
            assert event is NEED_DATA or isinstance(event, HandshakeComplete)
            machine.data_to_send()
    except TlsError:
        pass


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_to_a_server_raise_only_tls_errors(data: bytes) -> None:
    feed(TlsHandshake(SERVER, False), data)


@FUZZ
@given(edits, st.binary(max_size=64))
def test_a_mutated_client_hello_raises_only_tls_errors(changes: list[tuple[int, int]], tail: bytes) -> None:
    hello = bytearray(client_hello())
    for pos, value in changes:
        hello[pos % len(hello)] = value
    feed(TlsHandshake(SERVER, False), bytes(hello) + tail)


@FUZZ
@given(edits)
def test_a_mutated_server_flight_raises_only_tls_errors(changes: list[tuple[int, int]]) -> None:
    client = TlsHandshake(CLIENT, True, SERVER.peer_id(), [YAMUX])
    server = TlsHandshake(SERVER, False, None, [YAMUX])
    server.receive_data(client.data_to_send())
    server.next_event()
    flight = bytearray(server.data_to_send())
    for pos, value in changes:
        flight[pos % len(flight)] = value
    feed(client, bytes(flight))
