"""Kademlia keys: the spec's test vectors and the distance rules."""

import random

from dhtstore import multihash
from dhtstore.kadkey import Key, preimage_with_prefix
from dhtstore.multihash import SHA2_256_HEADER
from dhtstore.peerid import PeerId


def test_peer_id_vector_from_the_spec() -> None:
    peer = PeerId.from_string("12D3KooWLU2znyJMtDiHArqAGbZn8CgUGp92kxDBtefftEEaHSZS")
    assert Key.for_peer(peer).hex() == "e43d28f0996557c0d5571d75c62a57a59d7ac1d30a51ecedcdb9d5e4afa56100"


def test_cid_vector_hashes_the_multihash_not_the_cid() -> None:
    mh = multihash.from_cid("bafybeihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y")
    assert mh.hex().startswith("1220e536")
    assert Key.for_multihash(mh).hex() == "d623250f3f660ab4c3a53d3c97b3f6a0194c548053488d093520206248253bcb"


def test_distance_is_xor_and_symmetric() -> None:
    a, b = Key.hash(b"a"), Key.hash(b"b")
    assert a.distance(b) == b.distance(a) == int(a) ^ int(b)
    assert a.distance(a) == 0


def test_common_prefix_length() -> None:
    zero = Key(0)
    assert zero.common_prefix_length(Key(1 << 255)) == 0
    assert zero.common_prefix_length(Key(1)) == 255
    assert zero.common_prefix_length(zero) == 256


def test_preimage_with_prefix_hashes_under_the_prefix() -> None:
    rng = random.Random(1)
    for bits, length in ((0, 1), (0b1011, 4), (0b0110100111, 10), (0, 0)):
        mh = preimage_with_prefix(bits, length, rng.randbytes)
        assert mh[:2] == SHA2_256_HEADER and len(mh) == 34
        assert Key.hash(mh).prefix(length) == bits
    # The same random source gives the same preimage: simulations stay reproducible.
    assert preimage_with_prefix(5, 3, random.Random(2).randbytes) == preimage_with_prefix(5, 3, random.Random(2).randbytes)

