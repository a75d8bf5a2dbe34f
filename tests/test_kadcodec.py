"""The Kademlia codec: field numbers, strictness, framing limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtstore import varint
from dhtstore.amino import MAX_CLOSER_PEERS, MAX_MESSAGE_SIZE, MAX_PEER_RECORD_SIZE
from dhtstore.crypto.keys import PrivateKey
from dhtstore.network.kadcodec import (
    FrameDecoder,
    KadCodecError,
    MessageTooLarge,
    decode_message,
    encode_frame,
    encode_message,
)
from dhtstore.network.multiaddrs import parse as parse_multiaddr
from dhtstore.peerid import PeerId
from dhtstore.types import ConnectionType, Message, MessageType, PeerInfo, Record

ROOT = Path(__file__).resolve().parent.parent
ADDR = parse_multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes()
ADDR6 = parse_multiaddr("/ip6/::1/tcp/4001").to_bytes()


def peer_id() -> PeerId:
    return PrivateKey.generate().peer_id()


def field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    """A protobuf field written by hand, to pin the wire format independently of protoc."""
    tag = varint.encode(number << 3 | wire_type)
    if isinstance(payload, int):
        assert wire_type == 0
        return tag + varint.encode(payload)
    return tag + varint.encode(len(payload)) + payload


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_round_trip_of_every_field() -> None:
    message = Message(
        type=MessageType.GET_PROVIDERS,
        key=b"\x12\x20" + bytes(32),
        record=Record(b"/pk/x", b"value", "2026-11-22T00:00:00Z"),
        closer_peers=(PeerInfo(peer_id(), (ADDR, ADDR6), ConnectionType.CONNECTED),),
        provider_peers=(PeerInfo(peer_id(), (ADDR,), ConnectionType.CAN_CONNECT),),
    )
    assert decode_message(encode_message(message)) == message


def test_field_numbers_match_the_spec() -> None:
    closer, provider = peer_id(), peer_id()
    peer_entry = field(1, 2, closer.to_bytes()) + field(2, 2, ADDR) + field(3, 0, 1)
    raw = (
        field(1, 0, 4)  # type = FIND_NODE
        + field(2, 2, b"key")
        + field(3, 2, field(1, 2, b"rk") + field(2, 2, b"rv") + field(5, 2, b"t"))
        + field(8, 2, peer_entry)
        + field(9, 2, field(1, 2, provider.to_bytes()))
        + field(10, 0, 7)  # clusterLevelRaw: ignored
    )
    message = decode_message(raw)
    assert message.type is MessageType.FIND_NODE
    assert message.key == b"key"
    assert message.record == Record(b"rk", b"rv", "t")
    assert message.closer_peers == (PeerInfo(closer, (ADDR,), ConnectionType.CONNECTED),)
    assert message.provider_peers == (PeerInfo(provider),)
    # and our encoder writes the same fields (proto3 writes them in field order)
    assert encode_message(message) == raw.removesuffix(field(10, 0, 7))


def test_bad_peer_entries_are_skipped_and_counted() -> None:
    good = peer_id()
    raw = (
        field(1, 0, 3)
        + field(8, 2, field(1, 2, b"not a peer id"))
        + field(8, 2, field(1, 2, good.to_bytes()) + field(2, 2, b"\x04\x7f\x00") + field(2, 2, ADDR))
        + field(9, 2, b"")  # no id at all
    )
    message = decode_message(raw)
    assert message.closer_peers == (PeerInfo(good, (ADDR,)),)  # truncated /ip4 dropped
    assert message.provider_peers == ()
    assert message.skipped_peers == 2


def test_at_most_40_closer_peers_are_kept() -> None:
    peers = tuple(PeerInfo(peer_id(), (ADDR,)) for _ in range(MAX_CLOSER_PEERS + 5))
    message = decode_message(encode_message(Message(MessageType.FIND_NODE, closer_peers=peers)))
    assert message.closer_peers == peers[:MAX_CLOSER_PEERS]


def test_an_oversized_peer_entry_keeps_only_the_addresses_that_fit() -> None:
    dns = parse_multiaddr("/dns4/" + ".".join(["a" * 60] * 3) + ".example/tcp/1").to_bytes()
    addrs = (dns,) * 100  # ~19 KiB
    pid = peer_id()
    raw = field(1, 0, 4) + field(8, 2, field(1, 2, pid.to_bytes()) + b"".join(field(2, 2, a) for a in addrs))
    decoded = decode_message(raw).closer_peers[0]
    assert 0 < len(decoded.addrs) < len(addrs)
    assert sum(len(a) for a in decoded.addrs) <= MAX_PEER_RECORD_SIZE
    # encoding trims the same way
    encoded = decode_message(encode_message(Message(MessageType.FIND_NODE, closer_peers=(PeerInfo(pid, addrs),))))
    assert encoded.closer_peers[0].addrs == decoded.addrs


@pytest.mark.parametrize(
    "raw",
    [
        field(1, 0, 99),  # unknown type
        b"\x08",  # truncated varint
        field(2, 2, b"abc")[:-1],  # truncated bytes
        b"\xff\xff\xff",
        field(8, 2, b"\x0a\x05ab"),  # peer entry with a truncated id
    ],
)
def test_malformed_messages_are_refused(raw: bytes) -> None:
    with pytest.raises(KadCodecError):
        decode_message(raw)


def test_frames_split_at_every_byte_and_joined() -> None:
    messages = [Message(MessageType.PING), Message(MessageType.FIND_NODE, key=b"x" * 300)]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        while (m := decoder.next_message()) is not None:
            out.append(m)
    assert out == messages
    assert not decoder.in_frame
    decoder.receive_data(stream)
    assert [decoder.next_message(), decoder.next_message(), decoder.next_message()] == [*messages, None]


def test_an_oversized_length_prefix_is_refused_before_the_body() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(varint.encode(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(MessageTooLarge):
        decoder.next_message()
    exact = FrameDecoder()
    exact.receive_data(varint.encode(MAX_MESSAGE_SIZE))
    assert exact.next_message() is None and exact.in_frame  # waits for the body


def test_a_non_minimal_length_prefix_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x80\x00")
    with pytest.raises(KadCodecError):
        decoder.next_message()


def test_encoding_refuses_an_oversized_message() -> None:
    with pytest.raises(MessageTooLarge):
        encode_frame(Message(MessageType.PUT_VALUE, key=b"k" * (MAX_MESSAGE_SIZE + 1)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_decode_raises_only_codec_errors(data: bytes) -> None:
    try:
        decode_message(data)
    except KadCodecError:
        pass


_valid = encode_frame(
    Message(MessageType.GET_PROVIDERS, key=b"k", provider_peers=(PeerInfo(peer_id(), (ADDR, ADDR6)),))
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_valid) - 1), st.integers(0, 255)), max_size=6), st.integers(1, 64))
def test_fuzz_mutated_frames_raise_only_codec_errors(mutations: list[tuple[int, int]], chunk: int) -> None:
    data = bytearray(_valid * 2)
    for pos, value in mutations:
        data[pos] = value
    decoder = FrameDecoder()
    try:
        for i in range(0, len(data), chunk):
            decoder.receive_data(bytes(data[i : i + chunk]))
            while decoder.next_message() is not None:
                pass
    except KadCodecError:
        pass


@pytest.mark.parametrize(
    ("text_or_raw", "valid"),
    [
        ("/ip4/127.0.0.1/tcp/4001", True),
        ("/ip6/::1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA", True),
        ("/dns4/example.com/tcp/443/wss", True),
        (b"\x04\x7f\x00", False),  # truncated address
        (b"\x04\x7f\x00\x00\x01\x06\x0f", False),  # truncated port
        (bytes([0x8F, 0xCE, 0x06]) + b"\x00", False),  # unknown protocol code
        (b"\x36\x03\xff\xfe\xfd", False),  # dns4 that is not text
        (b"", False),
    ],
)
def test_binary_multiaddr_checks(text_or_raw: str | bytes, valid: bool) -> None:
    from dhtstore.network.multiaddrs import is_valid

    raw = parse_multiaddr(text_or_raw).to_bytes() if isinstance(text_or_raw, str) else text_or_raw
    assert is_valid(raw) is valid
