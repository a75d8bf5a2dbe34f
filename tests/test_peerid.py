import hashlib

import pytest

from dhtstore import multihash, varint
from dhtstore.crypto.keys import (
    KeyFormatError,
    KeyType,
    PrivateKey,
    PublicKey,
)
from dhtstore.peerid import PeerId, PeerIdError

SPEC_PEER = "12D3KooWLU2znyJMtDiHArqAGbZn8CgUGp92kxDBtefftEEaHSZS"
# libp2p peer-ids spec test vector: an Ed25519 public key protobuf.
SPEC_ED25519_PUB = bytes.fromhex("080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e")


def test_base58_and_cid_forms_round_trip() -> None:
    p = PeerId.from_string(SPEC_PEER)
    assert p.to_base58() == SPEC_PEER
    assert p.to_bytes().hex().startswith("0024080112209e3b")
    cid_form = p.to_cid_string()
    assert cid_form.startswith("bafz")
    assert PeerId.from_string(cid_form) == p


@pytest.mark.parametrize("key_type", list(KeyType))
def test_peer_id_of_each_key_type(key_type: KeyType) -> None:
    key = PrivateKey.generate(key_type)
    pid = key.peer_id()
    serialized = key.public_key().to_protobuf()
    if len(serialized) <= 42:
        assert pid.inline_public_key() == serialized
        assert PublicKey.from_protobuf(serialized) == key.public_key()
    else:
        assert pid.to_bytes() == b"\x12\x20" + hashlib.sha256(serialized).digest()
        assert pid.inline_public_key() is None
    assert PeerId.from_string(str(pid)) == pid


def test_spec_public_key_vector_encodes_deterministically() -> None:
    pub = PublicKey.from_protobuf(SPEC_ED25519_PUB)
    assert pub.key_type is KeyType.Ed25519
    assert pub.to_protobuf() == SPEC_ED25519_PUB


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00", b"\x12\x20" + b"\x00" * 31, b"\x11\x14" + b"\x00" * 20, b"\x00\x2b" + b"\x00" * 43],
)
def test_malformed_binary_peer_ids_are_refused(bad: bytes) -> None:
    with pytest.raises(PeerIdError):
        PeerId.from_bytes(bad)


@pytest.mark.parametrize("bad", ["", "   ", "Qmnotbase58!!", "bafybeihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y", "zzz"])
def test_malformed_text_peer_ids_are_refused(bad: str) -> None:
    with pytest.raises(PeerIdError):
        PeerId.from_string(bad)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_sign_verify_and_protobuf_round_trip(key_type: KeyType) -> None:
    key = PrivateKey.generate(key_type)
    again = PrivateKey.from_protobuf(key.to_protobuf())
    assert again.public_key() == key.public_key()
    sig = again.sign(b"message")
    assert key.public_key().verify(b"message", sig)
    assert not key.public_key().verify(b"messagE", sig)
    assert not key.public_key().verify(b"message", sig[:-1] + bytes([sig[-1] ^ 1]))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x12\x00\x08\x01",  # fields out of order
        SPEC_ED25519_PUB + b"\x00",  # trailing byte
        b"\x08\x07\x12\x01\x00",  # unknown key type
        b"\x08\x01\x12\x05abc",  # truncated data
        b"\x08\x01\x12\xff\xff\xff\xff\x0f",  # absurd length
        b"\x08\x00\x12\x03abc",  # RSA that is not DER
    ],
)
def test_malformed_key_protobufs_are_refused(blob: bytes) -> None:
    with pytest.raises(KeyFormatError):
        PublicKey.from_protobuf(blob)


def test_weak_rsa_keys_are_refused() -> None:
    weak = PrivateKey.generate(KeyType.RSA, rsa_bits=1024)
    with pytest.raises(KeyFormatError, match="1024 bits is outside 2048-8192"):
        PublicKey.from_protobuf(weak.public_key().to_protobuf())


def test_varint_round_trip_and_limits() -> None:
    for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        enc = varint.encode(n)
        assert varint.decode(enc) == (n, len(enc))
        assert varint.decode(enc[:-1]) is None
    with pytest.raises(varint.VarintError):
        varint.decode(b"\x80\x00")  # non-minimal
    with pytest.raises(varint.VarintError):
        varint.decode(b"\xff" * 10)


def test_multihash_checks() -> None:
    mh = multihash.from_cid("bafybeihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y")
    assert multihash.from_cid("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")[:2] == b"\x12\x20"
    assert multihash.check_key(mh) == mh
    with pytest.raises(multihash.MultihashError, match="limit"):
        multihash.check_key(b"\x00\x51" + b"\x00" * 81)
    with pytest.raises(multihash.MultihashError):
        multihash.check_key(b"\x12\x20\x00")
    with pytest.raises(multihash.MultihashError, match="not a CID"):
        multihash.from_cid("not-a-cid")
