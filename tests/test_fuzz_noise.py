"""Fuzz Noise: random, truncated and mutated handshake messages, hostile handshake
payloads (correctly encrypted, so they reach the payload parser) and mutated transport
frames raise only NoiseError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.network.noise import (
    NEED_DATA,
    HandshakeComplete,
    NoiseError,
    NoiseHandshake,
)
from dhtstore.pb import noise_pb2

FUZZ = settings(max_examples=200, deadline=None)
IDENTITY = PrivateKey.generate(KeyType.Ed25519)
PEER = PrivateKey.generate(KeyType.Secp256k1)

edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)
cuts = st.lists(st.integers(0, 10_000), max_size=6)


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


def feed_hostile(machine: NoiseHandshake, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for start, end in zip(points, points[1:]):
            machine.receive_data(data[start:end])
            event = machine.next_event()
            assert event is NEED_DATA or isinstance(event, HandshakeComplete)
            machine.data_to_send()
    except NoiseError:
        pass


def transcript() -> tuple[bytes, bytes, bytes]:
    """A real handshake's three framed messages."""
    dialer, listener = NoiseHandshake(IDENTITY, True), NoiseHandshake(PEER, False)
    msg1 = dialer.data_to_send()
    listener.receive_data(msg1)
    listener.next_event()
    msg2 = listener.data_to_send()
    dialer.receive_data(msg2)
    dialer.next_event()
    return msg1, msg2, dialer.data_to_send()


@FUZZ
@given(st.binary(max_size=1024), cuts)
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    feed_hostile(NoiseHandshake(IDENTITY, True), data, cuts)
    feed_hostile(NoiseHandshake(IDENTITY, False), data, cuts)


@FUZZ
@given(edits, cuts, st.integers(0, 400))
def test_mutated_and_truncated_handshake_messages(edits: list[tuple[int, int]], cuts: list[int], cut_at: int) -> None:
    msg1, msg2, msg3 = transcript()
    feed_hostile(NoiseHandshake(IDENTITY, True), mutate(msg2, edits)[:cut_at], cuts)
    listener = NoiseHandshake(PEER, False)
    feed_hostile(listener, msg1 + mutate(msg3, edits)[:cut_at], cuts)


class _HostilePeer(NoiseHandshake):
    """A responder that sends an arbitrary payload, correctly encrypted."""

    hostile_payload = b""

    def _build_payload(self, static_public: bytes) -> bytes:
        return self.hostile_payload


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda key_type, key_data, sig, muxers: noise_pb2.NoiseHandshakePayload(
            identity_key=b"\x08" + bytes([key_type]) + b"\x12" + bytes([len(key_data)]) + key_data,
            identity_sig=sig,
            extensions=noise_pb2.NoiseExtensions(stream_muxers=muxers),
        ).SerializeToString(),
        st.integers(0, 5),
        st.binary(max_size=100),
        st.binary(max_size=80),
        st.lists(st.text(max_size=20), max_size=3),
    ),
    st.builds(
        lambda sig: noise_pb2.NoiseHandshakePayload(
            identity_key=PEER.public_key().to_protobuf(), identity_sig=sig
        ).SerializeToString(),
        st.binary(max_size=80),
    ),
)


@FUZZ
@given(payloads)
def test_hostile_handshake_payloads(payload: bytes) -> None:
    dialer = NoiseHandshake(IDENTITY, True)
    hostile = _HostilePeer(PEER, False)
    hostile.hostile_payload = payload
    hostile.receive_data(dialer.data_to_send())
    hostile.next_event()
    dialer.receive_data(hostile.data_to_send())
    try:
        dialer.next_event()
    except NoiseError:
        return
    raise AssertionError("a payload without a valid signature was accepted")


@FUZZ
@given(st.binary(max_size=3000), edits, cuts)
def test_mutated_transport_frames(plaintext: bytes, edits: list[tuple[int, int]], cuts: list[int]) -> None:
    dialer, listener = NoiseHandshake(IDENTITY, True), NoiseHandshake(PEER, False)
    listener.receive_data(dialer.data_to_send())
    listener.next_event()
    dialer.receive_data(listener.data_to_send())
    dialer.next_event()
    listener.receive_data(dialer.data_to_send())
    listener.next_event()
    sender, receiver = dialer.transport(), listener.transport()
    wire = mutate(sender.encrypt(plaintext) + sender.encrypt(b"tail"), edits)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    received = b""
    try:
        for start, end in zip(points, points[1:]):
            receiver.receive_data(wire[start:end])
            received += receiver.decrypt_available()
    except NoiseError:
        return
    # A mutated length may leave a frame waiting for more bytes, but nothing forged gets through.
    assert (plaintext + b"tail").startswith(received)
