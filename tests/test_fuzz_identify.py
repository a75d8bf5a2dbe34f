"""Fuzz identify parsing: random, truncated and mutated streams raise only IdentifyError,
and whatever parses holds only checked values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from dhtstore.crypto.keys import PrivateKey
from dhtstore.network import multiaddrs
from dhtstore.network.identify import IdentifyError, build_identify, parse_identify

FUZZ = settings(max_examples=300, deadline=None)
KEY = PrivateKey.generate()
VALID = build_identify(
    KEY.public_key(),
    [Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes(), Multiaddr("/ip6/::1/tcp/4001").to_bytes()],
    ["/ipfs/kad/1.0.0", "/ipfs/id/1.0.0"],
    Multiaddr("/ip4/1.2.3.4/tcp/5").to_bytes(),
    "dhtstore/0.1.0",
)


def check(data: bytes) -> None:
    try:
        info = parse_identify(data, remote_peer=KEY.peer_id())
    except IdentifyError:
        return
    assert info.peer_id in (None, KEY.peer_id())
    assert all(multiaddrs.is_valid(a) for a in info.listen_addrs)
    assert all(isinstance(p, str) and p for p in info.protocols)
    assert info.agent_version is None or isinstance(info.agent_version, str)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4), st.integers(0, len(VALID)))
def test_mutated_and_truncated(edits: list[tuple[int, int]], cut_at: int) -> None:
    out = bytearray(VALID[:cut_at])
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    check(bytes(out))
