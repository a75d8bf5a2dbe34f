"""Noise XX: the Noise spec objects against a published test vector, then the libp2p
handshake between our own machines for every key type, and its failure modes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.network.noise import (
    MAX_FRAME_LENGTH,
    MAX_PLAINTEXT_LENGTH,
    NEED_DATA,
    SIGNATURE_PREFIX,
    CipherState,
    HandshakeComplete,
    NoiseError,
    NoiseHandshake,
    XXHandshakeState,
)
from dhtstore.network.sansio import NeedData
from dhtstore.pb import noise_pb2

# Noise_XX_25519_ChaChaPoly_SHA256 from the cacophony vectors (as shipped in
# mcginty/snow tests/vectors/cacophony.txt). Messages alternate initiator, responder, ...
# The first three are the handshake; the rest are transport messages.
CACOPHONY_XX: dict[str, Any] = {
    "prologue": "4a6f686e2047616c74",
    "init_static": "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_static": "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f276e038c48378ffce2b65285e0"
            "8d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f488ed8831161f19b7815528f8982ffe09be9b5c412f8a0db50f8814"
            "c7194e83f23dbd8d162c9326ad",
        ),
        (
            "462e20412e20486179656b",
            "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475b9df0f169ae80a89be0865b57f58"
            "c9fea0d4ec82a286427402f113e4b6ae769a1d95941d49b25030",
        ),
        ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
        ("4a65616e2d426170746973746520536179", "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5"),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
        ),
    ],
}


def _x25519(hex_key: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key))


def test_xx_state_matches_cacophony_vector() -> None:
    v = CACOPHONY_XX
    prologue = bytes.fromhex(v["prologue"])
    initiator = XXHandshakeState(True, _x25519(v["init_static"]), prologue, _x25519(v["init_ephemeral"]))
    responder = XXHandshakeState(False, _x25519(v["resp_static"]), prologue, _x25519(v["resp_ephemeral"]))
    sides = itertools.cycle([(initiator, responder), (responder, initiator)])
    ciphers: dict[int, tuple[CipherState, CipherState]] = {}
    for i, ((payload_hex, ciphertext_hex), (writer, reader)) in enumerate(zip(v["messages"], sides)):
        payload, expected = bytes.fromhex(payload_hex), bytes.fromhex(ciphertext_hex)
        if i < 3:
            message = writer.write_message(payload)
            assert message == expected, f"handshake message {i}"
            assert reader.read_message(message) == payload
            if i == 2:
                assert initiator.handshake_hash == responder.handshake_hash == bytes.fromhex(v["handshake_hash"])
                ciphers = {id(initiator): initiator.split(), id(responder): responder.split()}
        else:
            message = ciphers[id(writer)][0].encrypt_with_ad(b"", payload)
            assert message == expected, f"transport message {i}"
            assert ciphers[id(reader)][1].decrypt_with_ad(b"", message) == payload


def handshake(
    a: NoiseHandshake, b: NoiseHandshake, chunk: int | None = None
) -> tuple[HandshakeComplete | NeedData, HandshakeComplete | NeedData]:
    """Pump bytes between two handshakes until both complete; return their events."""
    events: dict[int, HandshakeComplete | NeedData] = {id(a): NEED_DATA, id(b): NEED_DATA}
    for _ in range(10):
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            step = chunk or max(len(data), 1)
            for i in range(0, len(data), step):
                dst.receive_data(data[i : i + step])
                events[id(dst)] = dst.next_event()
        if a.complete and b.complete:
            return events[id(a)], events[id(b)]
    raise AssertionError("handshake did not complete")


Identities = dict[KeyType, PrivateKey]
KEY_TYPES = [KeyType.Ed25519, KeyType.Secp256k1, KeyType.ECDSA, KeyType.RSA]


@pytest.fixture(scope="module")
def identities() -> Identities:
    return {t: PrivateKey.generate(t) for t in KEY_TYPES}


@pytest.mark.parametrize("init_type,resp_type", list(itertools.product(KEY_TYPES, KEY_TYPES)))
def test_handshake_between_all_key_types(identities: Identities, init_type: KeyType, resp_type: KeyType) -> None:
    init_key = identities[init_type]
    # Two distinct identities even when the types match.
    resp_key = PrivateKey.generate(resp_type) if init_type == resp_type else identities[resp_type]
    dialer = NoiseHandshake(init_key, initiator=True, expected_peer=resp_key.peer_id())
    listener = NoiseHandshake(resp_key, initiator=False)
    d_event, l_event = handshake(dialer, listener)
    assert d_event == HandshakeComplete(resp_key.peer_id(), resp_key.public_key())
    assert l_event == HandshakeComplete(init_key.peer_id(), init_key.public_key())
    assert dialer.remote_peer == resp_key.peer_id() and listener.remote_public_key == init_key.public_key()
    d, l = dialer.transport(), listener.transport()
    assert dialer.transport() is d  # one split only: a second would reuse nonces
    l.receive_data(d.encrypt(b"hello"))
    assert l.decrypt_available() == b"hello"
    d.receive_data(l.encrypt(b"world"))
    assert d.decrypt_available() == b"world"


def test_handshake_byte_by_byte_and_early_transport_data_carries_over(identities: Identities) -> None:
    dialer = NoiseHandshake(identities[KeyType.Ed25519], initiator=True)
    listener = NoiseHandshake(identities[KeyType.Secp256k1], initiator=False)
    listener.receive_data(dialer.data_to_send())
    assert listener.next_event() is NEED_DATA
    for byte in listener.data_to_send():
        dialer.receive_data(bytes([byte]))
        event = dialer.next_event()
    assert isinstance(event, HandshakeComplete)
    transport = dialer.transport()
    # Message 3 and the first transport frame travel in one segment, as real peers do.
    listener.receive_data(dialer.data_to_send() + transport.encrypt(b"/multistream/1.0.0"))
    assert isinstance(listener.next_event(), HandshakeComplete)
    assert listener.transport().decrypt_available() == b"/multistream/1.0.0"


def test_large_payload_is_split_into_max_size_frames(identities: Identities) -> None:
    dialer = NoiseHandshake(identities[KeyType.Ed25519], initiator=True)
    listener = NoiseHandshake(identities[KeyType.Ed25519], initiator=False)
    handshake(dialer, listener)
    d, l = dialer.transport(), listener.transport()
    data = bytes(range(256)) * 4096  # 1 MiB
    wire = d.encrypt(data)
    assert int.from_bytes(wire[:2], "big") == MAX_FRAME_LENGTH
    assert len(wire) == len(data) + (-(-len(data) // MAX_PLAINTEXT_LENGTH)) * 18
    received = bytearray()
    for i in range(0, len(wire), 10_000):
        l.receive_data(wire[i : i + 10_000])
        received += l.decrypt_available()
    assert received == data
    assert d.encrypt(b"") == b""


def test_wrong_expected_peer_fails(identities: Identities) -> None:
    dialer = NoiseHandshake(identities[KeyType.Ed25519], initiator=True, expected_peer=PrivateKey.generate().peer_id())
    listener = NoiseHandshake(identities[KeyType.Ed25519], initiator=False)
    listener.receive_data(dialer.data_to_send())
    listener.next_event()
    dialer.receive_data(listener.data_to_send())
    with pytest.raises(NoiseError, match="not the dialled"):
        dialer.next_event()


class _ForgedSignature(NoiseHandshake):
    """A peer that signs someone else's static key: its signature does not cover its own."""

    def _build_payload(self, static_public: bytes) -> bytes:
        other = X25519PrivateKey.generate().public_key().public_bytes_raw()
        return noise_pb2.NoiseHandshakePayload(
            identity_key=self._identity.public_key().to_protobuf(),
            identity_sig=self._identity.sign(SIGNATURE_PREFIX + other),
        ).SerializeToString()


@pytest.mark.parametrize("forger_is_initiator", [False, True])
def test_bad_signature_fails(identities: Identities, forger_is_initiator: bool) -> None:
    honest_key, forger_key = identities[KeyType.Ed25519], identities[KeyType.RSA]
    dialer: NoiseHandshake
    listener: NoiseHandshake
    if forger_is_initiator:
        dialer, listener, victim = _ForgedSignature(forger_key, True), NoiseHandshake(honest_key, False), "listener"
    else:
        dialer, listener, victim = NoiseHandshake(honest_key, True), _ForgedSignature(forger_key, False), "dialer"
    listener.receive_data(dialer.data_to_send())
    listener.next_event()
    dialer.receive_data(listener.data_to_send())
    if victim == "dialer":
        with pytest.raises(NoiseError, match="signature"):
            dialer.next_event()
        return
    dialer.next_event()
    listener.receive_data(dialer.data_to_send())
    with pytest.raises(NoiseError, match="signature"):
        listener.next_event()


def test_tampered_transport_frame_fails(identities: Identities) -> None:
    dialer = NoiseHandshake(identities[KeyType.Ed25519], initiator=True)
    listener = NoiseHandshake(identities[KeyType.Ed25519], initiator=False)
    handshake(dialer, listener)
    d, l = dialer.transport(), listener.transport()
    wire = bytearray(d.encrypt(b"payload"))
    wire[5] ^= 1
    l.receive_data(bytes(wire))
    with pytest.raises(NoiseError) as first:
        l.decrypt_available()
    l.receive_data(d.encrypt(b"valid, but the session is dead"))
    with pytest.raises(NoiseError) as again:
        l.decrypt_available()
    assert again.value is first.value
    short = NoiseHandshake(identities[KeyType.Ed25519], initiator=True)
    short_peer = NoiseHandshake(identities[KeyType.Ed25519], initiator=False)
    handshake(short, short_peer)
    t = short_peer.transport()
    t.receive_data(b"\x00\x05abcde")  # a frame shorter than the tag
    with pytest.raises(NoiseError):
        t.decrypt_available()


def test_early_muxer_negotiation_prefers_initiator_order(identities: Identities) -> None:
    dialer = NoiseHandshake(identities[KeyType.Ed25519], True, stream_muxers=["/yamux/1.0.0", "/mplex/6.7.0"])
    listener = NoiseHandshake(identities[KeyType.Ed25519], False, stream_muxers=["/mplex/6.7.0", "/yamux/1.0.0"])
    d_event, _ = handshake(dialer, listener)
    assert isinstance(d_event, HandshakeComplete)
    assert d_event.remote_stream_muxers == ("/mplex/6.7.0", "/yamux/1.0.0")
    assert dialer.selected_muxer == listener.selected_muxer == "/yamux/1.0.0"
    plain = NoiseHandshake(identities[KeyType.Ed25519], True)
    handshake(plain, NoiseHandshake(identities[KeyType.Ed25519], False, stream_muxers=["/yamux/1.0.0"]))
    assert plain.selected_muxer is None


def test_transport_before_completion_is_an_error(identities: Identities) -> None:
    with pytest.raises(NoiseError):
        NoiseHandshake(identities[KeyType.Ed25519], initiator=True).transport()
