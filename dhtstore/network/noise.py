"""libp2p Noise (``/noise``) as a sans-I/O state machine: the XX handshake and the
transport that follows it (libp2p specs, noise/README.md; the Noise Protocol
Framework rev. 34 for CipherState, SymmetricState and HandshakeState).

Protocol name ``Noise_XX_25519_ChaChaPoly_SHA256``, empty prologue. Every message,
handshake or transport, is framed as a 2-byte big-endian length and at most 65535
bytes. The handshake payload (``proto/noise.proto``) carries the peer's libp2p
identity key and its signature over ``"noise-libp2p-static-key:" ‖ static X25519 key``;
the responder sends it in message 2, the initiator in message 3.

Use (h11 style, no sockets):

    hs = NoiseHandshake(identity, initiator=True, expected_peer=dialled_peer)
    sock.send(hs.data_to_send())              # the initiator's message 1, at once
    hs.receive_data(sock.recv())
    event = hs.next_event()                   # NEED_DATA or HandshakeComplete
    sock.send(hs.data_to_send())              # after every next_event
    transport = hs.transport()                # once complete; keeps any bytes already received
    sock.send(transport.encrypt(b"..."))
    transport.receive_data(sock.recv()); plaintext = transport.decrypt_available()

Interface notes (for the host): the transport is read with ``decrypt_available()``
(there is no transport ``next_event``). Early muxer negotiation (Noise extensions,
connections/inlined-muxer-negotiation.md): give ``stream_muxers=["/yamux/1.0.0"]``;
when ``selected_muxer`` is set after the handshake, skip the multistream round for the
muxer. js-libp2p 3.x offers ``/yamux/1.0.0`` this way; with a peer that offers nothing,
``selected_muxer`` is None and multistream picks the muxer as usual.

A wrong signature, a peer id other than ``expected_peer``, an unparsable key or payload,
a failed decryption or any malformed frame raises ``NoiseError``; after one, every
further ``next_event``/``decrypt_available`` raises it again. Only primitives from
``cryptography`` are used: X25519, ChaCha20-Poly1305, SHA-256 and HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from google.protobuf.message import DecodeError

from ..crypto.keys import KeyFormatError, PrivateKey, PublicKey
from ..errors import ProtocolViolation
from ..pb import noise_pb2
from ..peerid import PeerId
from .sansio import NEED_DATA, NeedData

PROTOCOL_ID = "/noise"
PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
MAX_FRAME_LENGTH = 65535
TAG_LENGTH = 16
MAX_PLAINTEXT_LENGTH = MAX_FRAME_LENGTH - TAG_LENGTH
DH_LENGTH = 32
HASH_LENGTH = 32
MAX_NONCE = 2**64 - 1  # reserved by the Noise spec; reaching it ends the session

__all__ = [
    "MAX_FRAME_LENGTH",
    "MAX_PLAINTEXT_LENGTH",
    "NEED_DATA",
    "PROTOCOL_ID",
    "CipherState",
    "HandshakeComplete",
    "NoiseError",
    "NoiseHandshake",
    "NoiseTransport",
    "SymmetricState",
    "XXHandshakeState",
]


class NoiseError(ProtocolViolation):
    """The handshake or a transport frame failed; the connection must be closed."""


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    remote_peer: PeerId
    remote_public_key: PublicKey
    # The remote's early-muxer list (Noise extensions), in its order of preference.
    remote_stream_muxers: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# The Noise Protocol Framework objects (spec sections 5.1–5.3), XX pattern only.


def _hkdf(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs (spec section 4.3), on HMAC-SHA256."""
    temp_key = hmac.digest(chaining_key, input_key_material, "sha256")
    output1 = hmac.digest(temp_key, b"\x01", "sha256")
    output2 = hmac.digest(temp_key, output1 + b"\x02", "sha256")
    return output1, output2


def _dh(private: X25519PrivateKey, public: bytes | None) -> bytes:
    if public is None:  # unreachable through the handshake's fixed message order
        raise NoiseError("the remote's key is not known yet")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # a low-order point gives an all-zero secret, which cryptography refuses
        raise NoiseError("invalid X25519 public key from the remote") from None


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class CipherState:
    """A ChaCha20-Poly1305 key and its 64-bit nonce counter (spec section 5.1)."""

    __slots__ = ("_aead", "_nonce")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self._nonce = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def _next_nonce(self) -> bytes:
        if self._nonce >= MAX_NONCE:
            raise NoiseError("nonce space exhausted; the session must end")
        nonce = b"\x00\x00\x00\x00" + self._nonce.to_bytes(8, "little")
        return nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | memoryview) -> bytes:
        if self._aead is None:
            return bytes(plaintext)
        ciphertext = self._aead.encrypt(self._next_nonce(), plaintext, ad)
        self._nonce += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if len(ciphertext) < TAG_LENGTH:
            raise NoiseError("ciphertext shorter than its authentication tag")
        try:
            plaintext = self._aead.decrypt(self._next_nonce(), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("decryption failed (bad tag)") from None
        self._nonce += 1
        return plaintext


class SymmetricState:
    """Chaining key, handshake hash and the handshake's CipherState (spec section 5.2)."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_LENGTH:
            self.h = protocol_name.ljust(HASH_LENGTH, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_key = _hkdf(self.ck, input_key_material)
        self.cipher = CipherState(temp_key)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        key1, key2 = _hkdf(self.ck, b"")
        return CipherState(key1), CipherState(key2)


class XXHandshakeState:
    """The XX pattern (``-> e``; ``<- e, ee, s, es``; ``-> s, se``), spec section 5.3.

    ``ephemeral`` is for test vectors only; normally a fresh key is generated.
    """

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self.symmetric = SymmetricState(PROTOCOL_NAME)
        self.symmetric.mix_hash(prologue)
        self._s = static
        self._e = ephemeral or X25519PrivateKey.generate()
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        self.message_index = 0  # 0, 1, 2; 3 means the handshake is done

    @property
    def finished(self) -> bool:
        return self.message_index == 3

    @property
    def handshake_hash(self) -> bytes:
        return self.symmetric.h

    def _writes_next(self) -> bool:
        return (self.message_index % 2 == 0) == self.initiator

    def write_message(self, payload: bytes) -> bytes:
        if self.finished or not self._writes_next():
            raise NoiseError("not this side's turn to write a handshake message")
        sym = self.symmetric
        out = b""
        if self.message_index == 0:  # -> e
            out += self._write_e()
        elif self.message_index == 1:  # <- e, ee, s, es
            out += self._write_e()
            sym.mix_key(_dh(self._e, self._re))
            out += sym.encrypt_and_hash(_public_bytes(self._s))
            sym.mix_key(_dh(self._s, self._re))
        else:  # -> s, se
            out += sym.encrypt_and_hash(_public_bytes(self._s))
            sym.mix_key(_dh(self._s, self._re))
        out += sym.encrypt_and_hash(payload)
        self.message_index += 1
        return out

    def read_message(self, message: bytes) -> bytes:
        if self.finished or self._writes_next():
            raise NoiseError("not this side's turn to read a handshake message")
        sym = self.symmetric
        view = memoryview(message)
        if self.message_index == 0:  # -> e
            view = self._read_e(view)
        elif self.message_index == 1:  # <- e, ee, s, es
            view = self._read_e(view)
            sym.mix_key(_dh(self._e, self._re))
            view = self._read_s(view)
            sym.mix_key(_dh(self._e, self.remote_static))
        else:  # -> s, se
            view = self._read_s(view)
            sym.mix_key(_dh(self._e, self.remote_static))
        payload = sym.decrypt_and_hash(bytes(view))
        self.message_index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) CipherStates for this side."""
        if not self.finished:
            raise NoiseError("handshake not finished")
        c1, c2 = self.symmetric.split()
        return (c1, c2) if self.initiator else (c2, c1)

    def _write_e(self) -> bytes:
        public = _public_bytes(self._e)
        self.symmetric.mix_hash(public)
        return public

    def _read_e(self, view: memoryview) -> memoryview:
        if len(view) < DH_LENGTH:
            raise NoiseError("handshake message too short for an ephemeral key")
        self._re = bytes(view[:DH_LENGTH])
        self.symmetric.mix_hash(self._re)
        return view[DH_LENGTH:]

    def _read_s(self, view: memoryview) -> memoryview:
        length = DH_LENGTH + (TAG_LENGTH if self.symmetric.cipher.has_key else 0)
        if len(view) < length:
            raise NoiseError("handshake message too short for a static key")
        self.remote_static = self.symmetric.decrypt_and_hash(bytes(view[:length]))
        return view[length:]


# ---------------------------------------------------------------------------
# Framing and the libp2p layer.


class _FrameReader:
    """Splits a byte stream into 2-byte-length-prefixed frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> list[bytes]:
        buf = self._buffer
        out = []
        pos = 0
        while len(buf) - pos >= 2:
            length = int.from_bytes(buf[pos : pos + 2], "big")
            if len(buf) - pos - 2 < length:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        del buf[:pos]
        return out

    def next_frame(self) -> bytes | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length = int.from_bytes(buf[:2], "big")
        if len(buf) - 2 < length:
            return None
        frame = bytes(buf[2 : 2 + length])
        del buf[: 2 + length]
        return frame

    def take_rest(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def _frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


class NoiseTransport:
    """Encrypts and decrypts transport frames after a completed handshake."""

    def __init__(self, send: CipherState, receive: CipherState, received: bytes = b"") -> None:
        self._send = send
        self._receive = receive
        self._reader = _FrameReader()
        self._reader.feed(received)
        self._error: NoiseError | None = None

    def encrypt(self, plaintext: bytes) -> bytes:
        """Frames for ``plaintext``, split into pieces of at most MAX_PLAINTEXT_LENGTH."""
        out = bytearray()
        view = memoryview(plaintext)
        for start in range(0, len(view), MAX_PLAINTEXT_LENGTH):
            out += _frame(self._send.encrypt_with_ad(b"", view[start : start + MAX_PLAINTEXT_LENGTH]))
        return bytes(out)

    def receive_data(self, ciphertext: bytes) -> None:
        self._reader.feed(ciphertext)

    def decrypt_available(self) -> bytes:
        """The plaintext of every complete frame received so far (b"" if none)."""
        if self._error is not None:
            raise self._error
        try:
            return b"".join([self._receive.decrypt_with_ad(b"", frame) for frame in self._reader.frames()])
        except NoiseError as exc:
            self._error = exc
            raise


def _select_muxer(initiator_muxers: Sequence[str], responder_muxers: Sequence[str]) -> str | None:
    """Early muxer negotiation: the initiator's first choice that the responder offers."""
    offered = set(responder_muxers)
    return next((m for m in initiator_muxers if m in offered), None)


class NoiseHandshake:
    """The libp2p Noise XX handshake for one connection, initiator or responder."""

    def __init__(
        self,
        identity: PrivateKey,
        initiator: bool,
        expected_peer: PeerId | None = None,
        stream_muxers: Sequence[str] = (),
        *,
        _static: X25519PrivateKey | None = None,
    ) -> None:
        self._identity = identity
        self.initiator = initiator
        self._expected_peer = expected_peer
        self.stream_muxers = tuple(stream_muxers)
        static = _static or X25519PrivateKey.generate()
        self._state = XXHandshakeState(initiator, static)
        self._payload = self._build_payload(_public_bytes(static))
        self._reader = _FrameReader()
        self._outbox = bytearray()
        self._result: HandshakeComplete | None = None
        self._error: NoiseError | None = None
        self._transport: NoiseTransport | None = None
        if initiator:
            self._outbox += _frame(self._state.write_message(b""))

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
        """The muxer agreed through Noise extensions, or None (then use multistream)."""
        result = self._completed()
        ours, theirs = self.stream_muxers, result.remote_stream_muxers
        return _select_muxer(ours, theirs) if self.initiator else _select_muxer(theirs, ours)

    def receive_data(self, data: bytes) -> None:
        if self._transport is not None:  # late bytes belong to the transport
            self._transport.receive_data(data)
        else:
            self._reader.feed(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def next_event(self) -> HandshakeComplete | NeedData:
        if self._error is not None:
            raise self._error
        try:
            while self._result is None:
                frame = self._reader.next_frame()
                if frame is None:
                    return NEED_DATA
                self._on_frame(frame)
        except NoiseError as exc:
            self._error = exc
            raise
        return self._result

    def transport(self) -> NoiseTransport:
        """The transport cipher pair; bytes received after the last handshake frame carry
        over. Always the same object: a second split would reuse nonces."""
        self._completed()
        if self._transport is None:
            send, receive = self._state.split()
            self._transport = NoiseTransport(send, receive, self._reader.take_rest())
        return self._transport

    def _completed(self) -> HandshakeComplete:
        if self._result is None:
            raise NoiseError("the Noise handshake is not complete")
        return self._result

    def _on_frame(self, frame: bytes) -> None:
        index = self._state.message_index
        payload = self._state.read_message(frame)
        if index == 0:  # responder got "e"; the initiator's payload here is empty by spec
            self._outbox += _frame(self._state.write_message(self._payload))
        elif index == 1:  # initiator got the responder's identity
            self._result = self._verify(payload)
            self._outbox += _frame(self._state.write_message(self._payload))
        else:  # responder got the initiator's identity
            self._result = self._verify(payload)

    def _build_payload(self, static_public: bytes) -> bytes:
        payload = noise_pb2.NoiseHandshakePayload(
            identity_key=self._identity.public_key().to_protobuf(),
            identity_sig=self._identity.sign(SIGNATURE_PREFIX + static_public),
        )
        if self.stream_muxers:
            payload.extensions.stream_muxers.extend(self.stream_muxers)
        return payload.SerializeToString()

    def _verify(self, payload_bytes: bytes) -> HandshakeComplete:
        payload = noise_pb2.NoiseHandshakePayload()
        try:
            payload.ParseFromString(payload_bytes)
        except DecodeError:
            raise NoiseError("handshake payload does not parse") from None
        if not payload.identity_key or not payload.identity_sig:
            raise NoiseError("handshake payload lacks the identity key or signature")
        try:
            public_key = PublicKey.from_protobuf(payload.identity_key)
        except KeyFormatError as exc:
            raise NoiseError(f"remote identity key: {exc}") from None
        static = self._state.remote_static
        assert static is not None
        if not public_key.verify(SIGNATURE_PREFIX + static, payload.identity_sig):
            raise NoiseError("remote identity signature over the Noise static key is invalid")
        peer = public_key.peer_id()
        if self._expected_peer is not None and peer != self._expected_peer:
            raise NoiseError(f"remote is {peer}, not the dialled {self._expected_peer}")
        muxers = tuple(m for m in payload.extensions.stream_muxers if isinstance(m, str))
        return HandshakeComplete(peer, public_key, muxers)
