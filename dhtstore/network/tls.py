"""libp2p TLS (``/tls/1.0.0``, libp2p specs tls/tls.md) as a sans-I/O machine with the
interface of ``noise.NoiseHandshake``/``NoiseTransport``: bytes in, bytes out, driven
by the host.

TLS itself is OpenSSL's, through pyOpenSSL over memory BIOs. The standard library's
``ssl`` (MemoryBIO) was the other candidate and cannot do the server side: a server
only asks for a client certificate with ``CERT_OPTIONAL``/``CERT_REQUIRED``, and then
checks it against its CA store, which a fresh self-signed certificate never passes
(tried: "certificate verify failed: self-signed certificate"); there is no verify
callback to say otherwise. pyOpenSSL has one (``set_verify``), ALPN on both sides and
memory BIOs; the libp2p checks of the certificate then run after the handshake on the
one certificate the peer sent (``tlscert.verify_certificate``).

The handshake: TLS 1.3 only; a fresh certificate and P-256 key per connection
(``tlscert.make_certificate``); the server requires a client certificate; no SNI;
the peer must send exactly one certificate, which must authenticate a libp2p key, and
on a dial that key's peer id must be the dialled one. ALPN carries early muxer
negotiation (connections/inlined-muxer-negotiation.md): our muxers, then ``libp2p``;
the server takes the client's first choice it supports, and refuses a client that
offers nothing it knows. ``selected_muxer`` is None when ALPN ended on ``libp2p``
(then multistream picks the muxer). Use::

    hs = TlsHandshake(identity, initiator=True, expected_peer=peer, stream_muxers=["/yamux/1.0.0"])
    sock.send(hs.data_to_send())                # the ClientHello
    hs.receive_data(sock.recv()); event = hs.next_event()   # NEED_DATA or HandshakeComplete
    sock.send(hs.data_to_send())                # after every next_event
    transport = hs.transport()                  # encrypt / receive_data / decrypt_available

Every failure (a TLS alert or malformed record, a refused certificate, no ALPN
overlap) raises ``TlsError``, a ProtocolViolation, and again on each later call.

A TLS 1.3 client finishes before the server has checked its certificate (the spec's
"Note for clients"): a server that refuses it closes the connection, which the client
sees on its first read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from ..crypto.keys import PrivateKey, PublicKey
from ..errors import ProtocolViolation
from ..peerid import PeerId
from .noise import HandshakeComplete
from .sansio import NEED_DATA, NeedData
from .tlscert import CertificateError, make_certificate, verify_certificate

PROTOCOL_ID = "/tls/1.0.0"
ALPN_LIBP2P = b"libp2p"
READ_CHUNK = 64 * 1024
MAX_PLAINTEXT_RECORD = 16 * 1024  # TLS's record size: one SSL_write per record keeps writes bounded

__all__ = ["PROTOCOL_ID", "TlsError", "TlsHandshake", "TlsTransport"]


class TlsError(ProtocolViolation):
    """The TLS handshake or a record failed; the connection must be closed."""


def _accept_any(conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's own chain check would refuse every self-signed certificate; ours
    runs once the handshake is done (``verify_certificate``)."""
    return True


def _alpn_selector(supported: Sequence[bytes]) -> Callable[[SSL.Connection, list[bytes]], bytes]:
    """The server's ALPN choice: the client's first protocol that we support."""
    ours = frozenset(supported)

    def select(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        chosen = next((p for p in offered if p in ours), None)
        if chosen is None:  # the spec: the server MUST abort the handshake
            raise TlsError(f"the client offered no protocol we support in ALPN: {offered!r}")
        return chosen

    return select


def _drain(conn: SSL.Connection) -> bytes:
    out = bytearray()
    while True:
        try:
            out += conn.bio_read(READ_CHUNK)
        except SSL.WantReadError:
            return bytes(out)


def _describe(exc: SSL.Error) -> str:
    """OpenSSL's error queue, one line: [(lib, func, reason), ...] → 'reason; reason'."""
    reasons = [str(item[-1]) for item in exc.args[0]] if exc.args and isinstance(exc.args[0], list) else []
    return "; ".join(r for r in reasons if r) or type(exc).__name__


class TlsTransport:
    """Encrypts and decrypts TLS records after a completed handshake."""

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn
        self._error: TlsError | None = None

    def encrypt(self, plaintext: bytes) -> bytes:
        """The records for ``plaintext`` (and anything TLS itself still had to send)."""
        if self._error is not None:
            raise self._error
        view = memoryview(plaintext)
        try:
            for start in range(0, len(view), MAX_PLAINTEXT_RECORD):
                self._conn.sendall(view[start : start + MAX_PLAINTEXT_RECORD])
        except SSL.Error as exc:
            self._error = TlsError(f"TLS write failed: {_describe(exc)}")
            raise self._error from None
        return _drain(self._conn)

    def receive_data(self, ciphertext: bytes) -> None:
        if ciphertext:  # OpenSSL's BIO_write fails on nothing
            self._conn.bio_write(ciphertext)

    def decrypt_available(self) -> bytes:
        """The plaintext of every complete record received so far (b"" if none)."""
        if self._error is not None:
            raise self._error
        out = bytearray()
        try:
            while True:
                out += self._conn.recv(READ_CHUNK)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:  # the peer's close_notify: its FIN follows
            pass
        except SSL.Error as exc:
            self._error = TlsError(f"TLS record refused: {_describe(exc)}")
            raise self._error from None
        return bytes(out)


class TlsHandshake:
    """The libp2p TLS handshake for one connection, client (initiator) or server."""

    def __init__(
        self,
        identity: PrivateKey,
        initiator: bool,
        expected_peer: PeerId | None = None,
        stream_muxers: Sequence[str] = (),
    ) -> None:
        self.initiator = initiator
        self._expected_peer = expected_peer
        self.stream_muxers = tuple(stream_muxers)
        self._alpn = [m.encode() for m in self.stream_muxers] + [ALPN_LIBP2P]
        key, cert = make_certificate(identity)
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # every connection has a new certificate anyway
        ctx.set_options(SSL.OP_NO_TICKET)
        if initiator:
            ctx.set_alpn_protos(self._alpn)
        else:
            ctx.set_alpn_select_callback(_alpn_selector(self._alpn))
        self._conn = SSL.Connection(ctx, None)
        self._result: HandshakeComplete | None = None
        self._error: TlsError | None = None
        self._transport: TlsTransport | None = None
        if initiator:
            self._conn.set_connect_state()
            self._step()  # the ClientHello, ready to send at once
        else:
            self._conn.set_accept_state()

    @property
    def complete(self) -> bool:
        return self._result is not None

    @property
    def remote_peer(self) -> PeerId:
        return self._completed().remote_peer

    @property
    def remote_public_key(self) -> PublicKey:
        return self._completed().remote_public_key

    @property
    def selected_muxer(self) -> str | None:
        """The muxer agreed through ALPN, or None (ALPN said ``libp2p``: use multistream)."""
        self._completed()
        name = self._conn.get_alpn_proto_negotiated().decode("ascii", "replace")
        return name if name in self.stream_muxers else None

    def receive_data(self, data: bytes) -> None:
        if data:  # OpenSSL's BIO_write fails on nothing
            self._conn.bio_write(data)

    def data_to_send(self) -> bytes:
        return _drain(self._conn)

    def next_event(self) -> HandshakeComplete | NeedData:
        if self._error is not None:
            raise self._error
        if self._result is None:
            try:
                if not self._step():
                    return NEED_DATA
                self._result = self._verify_peer()
            except TlsError as exc:
                self._error = exc
                raise
        return self._result

    def transport(self) -> TlsTransport:
        """The record layer; bytes already received past the handshake carry over."""
        self._completed()
        if self._transport is None:
            self._transport = TlsTransport(self._conn)
        return self._transport

    def _completed(self) -> HandshakeComplete:
        if self._result is None:
            raise TlsError("the TLS handshake is not complete")
        return self._result

    def _step(self) -> bool:
        """Advance the handshake; True once it is done."""
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except TlsError:  # raised in our ALPN callback, re-raised by pyOpenSSL
            raise
        except SSL.Error as exc:
            raise TlsError(f"TLS handshake failed: {_describe(exc)}") from None
        return True

    def _verify_peer(self) -> HandshakeComplete:
        if self._conn.get_protocol_version_name() != "TLSv1.3":  # set_min_proto_version makes it so
            raise TlsError(f"negotiated {self._conn.get_protocol_version_name()}, not TLS 1.3")
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        chain = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        # OpenSSL lists the peer's own certificate in the chain on the client side only.
        sent = len(chain) if self.initiator else len(chain) + (cert is not None)
        if cert is None or sent != 1:
            raise TlsError(f"the peer sent {sent} certificates, not exactly one")
        try:
            public_key = verify_certificate(cert.public_bytes(Encoding.DER))
        except CertificateError as exc:
            raise TlsError(str(exc)) from None
        peer = public_key.peer_id()
        if self._expected_peer is not None and peer != self._expected_peer:
            raise TlsError(f"remote is {peer}, not the dialled {self._expected_peer}")
        return HandshakeComplete(peer, public_key)
