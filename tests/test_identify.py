"""Identify messages: build ours, parse a peer's, limits, push semantics."""

from __future__ import annotations

import pytest
from multiaddr import Multiaddr

from dhtstore import varint
from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.network.identify import (
    MAX_MESSAGE_SIZE,
    MAX_MESSAGES,
    MAX_OWN_MESSAGE_SIZE,
    IdentifyError,
    IdentifyInfo,
    build_identify,
    parse_identify,
)
from dhtstore.pb import identify_pb2

ADDR4 = Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes()
ADDR6 = Multiaddr("/ip6/::1/tcp/4002").to_bytes()
OBSERVED = Multiaddr("/ip4/10.0.0.7/tcp/51234").to_bytes()


def delimited(message: identify_pb2.Identify) -> bytes:
    body = message.SerializeToString()
    return varint.encode(len(body)) + body


@pytest.mark.parametrize("key_type", [KeyType.Ed25519, KeyType.RSA])
def test_round_trip(key_type: KeyType) -> None:
    key = PrivateKey.generate(key_type)
    wire = build_identify(
        key.public_key(), [ADDR4, ADDR6], ["/ipfs/kad/1.0.0", "/ipfs/ping/1.0.0"], OBSERVED, "dhtstore/0.1.0"
    )
    info = parse_identify(wire, remote_peer=key.peer_id())
    assert info == IdentifyInfo(
        public_key=key.public_key(),
        peer_id=key.peer_id(),
        listen_addrs=(ADDR4, ADDR6),
        protocols=("/ipfs/kad/1.0.0", "/ipfs/ping/1.0.0"),
        observed_addr=OBSERVED,
        protocol_version="ipfs/0.1.0",
        agent_version="dhtstore/0.1.0",
    )
    assert info.skipped == 0


def test_public_key_of_another_peer_is_refused() -> None:
    wire = build_identify(PrivateKey.generate().public_key(), [], [], None, "x")
    with pytest.raises(IdentifyError, match="not the connection"):
        parse_identify(wire, remote_peer=PrivateKey.generate().peer_id())


def test_invalid_entries_are_skipped_and_counted() -> None:
    message = identify_pb2.Identify(
        listenAddrs=[ADDR4, b"\x04\x7f\x00", b"\xff\xff\xff"],  # truncated ip4, unknown code
        protocols=["/ok/1.0.0", "", "a" * 2000],
        observedAddr=b"\x06",
        signedPeerRecord=b"envelope",
    )
    body = message.SerializeToString()
    body += b"\x1a\x02\xff\xfe"  # a protocol id that is not UTF-8
    info = parse_identify(varint.encode(len(body)) + body)
    assert info.listen_addrs == (ADDR4,)
    assert info.protocols == ("/ok/1.0.0",)
    assert info.observed_addr is None
    assert info.public_key is None and info.peer_id is None
    assert info.signed_peer_record == b"envelope"
    assert info.skipped == 6


def test_several_messages_are_merged_as_go_does() -> None:
    key = PrivateKey.generate()
    first = identify_pb2.Identify(publicKey=key.public_key().to_protobuf(), protocols=["/a"], agentVersion="v1")
    second = identify_pb2.Identify(protocols=["/b"], listenAddrs=[ADDR4], agentVersion="v2")
    info = parse_identify(delimited(first) + delimited(second), key.peer_id())
    assert info.protocols == ("/a", "/b") and info.listen_addrs == (ADDR4,) and info.agent_version == "v2"


def test_limits() -> None:
    big = identify_pb2.Identify(agentVersion="a" * MAX_MESSAGE_SIZE)
    with pytest.raises(IdentifyError, match="over"):
        parse_identify(delimited(big))
    # The size is refused from the prefix alone, before the body arrives.
    with pytest.raises(IdentifyError, match="over"):
        parse_identify(varint.encode(MAX_MESSAGE_SIZE + 1))
    small = delimited(identify_pb2.Identify(protocols=["/p"]))
    assert len(parse_identify(small * MAX_MESSAGES).protocols) == MAX_MESSAGES
    with pytest.raises(IdentifyError, match="more than"):
        parse_identify(small * (MAX_MESSAGES + 1))


@pytest.mark.parametrize("wire", [b"", b"\x05abc", b"\x80", b"\x03\xff\xff\xff", b"\x02\x0a\x05"])
def test_malformed_streams(wire: bytes) -> None:
    with pytest.raises(IdentifyError):
        parse_identify(wire)


def test_own_message_stays_under_rust_limit_by_dropping_addresses() -> None:
    key = PrivateKey.generate(KeyType.RSA)
    addrs = [Multiaddr(f"/ip4/10.0.{i // 256}.{i % 256}/tcp/4001").to_bytes() for i in range(1000)]
    wire = build_identify(key.public_key(), addrs, ["/ipfs/kad/1.0.0"], None, "dhtstore")
    assert len(wire) <= MAX_OWN_MESSAGE_SIZE + 2
    info = parse_identify(wire)
    assert 0 < len(info.listen_addrs) < 1000 and info.listen_addrs == tuple(addrs[: len(info.listen_addrs)])


def test_push_updates_only_the_fields_it_carries() -> None:
    key = PrivateKey.generate()
    known = parse_identify(build_identify(key.public_key(), [ADDR4], ["/a", "/b"], OBSERVED, "agent/1"))
    push = parse_identify(delimited(identify_pb2.Identify(protocols=["/a", "/b", "/ipfs/kad/1.0.0"])))
    updated = known.updated_by(push)
    assert updated.protocols == ("/a", "/b", "/ipfs/kad/1.0.0")
    assert updated.listen_addrs == (ADDR4,) and updated.agent_version == "agent/1"
    assert updated.peer_id == key.peer_id()


def test_versions_that_are_not_utf8_are_skipped() -> None:
    body = b"\x2a\x02\xff\xfe" + b"\x32\x03abc"  # protocolVersion (5) invalid, agentVersion (6) "abc"
    info = parse_identify(varint.encode(len(body)) + body)
    assert info.protocol_version is None and info.agent_version == "abc" and info.skipped == 1
