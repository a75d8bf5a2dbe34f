"""/pk/ records and the Amino namespaced validator."""

from __future__ import annotations

import datetime

import pytest

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.records import ipns, pk
from dhtstore.records.api import RecordError, Validator
from dhtstore.records.validators import NamespacedValidator, split_key

UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def ed() -> PrivateKey:
    return PrivateKey.generate(KeyType.Ed25519)


@pytest.fixture(scope="module")
def rsa() -> PrivateKey:
    return PrivateKey.generate(KeyType.RSA)


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestPublicKeyRecords:
    def test_valid_for_every_key_type(self) -> None:
        v = NamespacedValidator()
        for key_type in KeyType:
            public = PrivateKey.generate(key_type).public_key()
            v.validate(pk.routing_key(public.peer_id()), public.to_protobuf())

    def test_key_of_another_peer(self, ed: PrivateKey, rsa: PrivateKey) -> None:
        with pytest.raises(RecordError, match="does not match"):
            NamespacedValidator().validate(pk.routing_key(ed.peer_id()), rsa.public_key().to_protobuf())

    @pytest.mark.parametrize("value", [b"", b"\x08\x01\x12\x01x", b"junk"])
    def test_value_that_is_not_a_key(self, ed: PrivateKey, value: bytes) -> None:
        with pytest.raises(RecordError):
            NamespacedValidator().validate(pk.routing_key(ed.peer_id()), value)

    def test_key_that_is_not_a_multihash(self, ed: PrivateKey) -> None:
        with pytest.raises(RecordError, match="multihash"):
            NamespacedValidator().validate(b"/pk/\x12\x20short", ed.public_key().to_protobuf())

    def test_select_takes_the_first(self, rsa: PrivateKey) -> None:
        key, value = pk.routing_key(rsa.peer_id()), rsa.public_key().to_protobuf()
        assert NamespacedValidator().select(key, [value, value]) == 0


class TestNamespacedValidator:
    def test_implements_the_protocol(self) -> None:
        assert isinstance(NamespacedValidator(), Validator)

    @pytest.mark.parametrize("key", [b"/v/abc", b"/providers/abc", b"/IPNS/abc", b"/pkx/abc"])
    def test_unknown_namespace(self, key: bytes, ed: PrivateKey) -> None:
        with pytest.raises(RecordError, match="unknown record namespace"):
            NamespacedValidator().validate(key, ed.public_key().to_protobuf())
        with pytest.raises(RecordError):
            NamespacedValidator().select(key, [b"x"])

    @pytest.mark.parametrize("key", [b"", b"pk/x", b"//x", b"/pk", b"/"])
    def test_malformed_keys(self, key: bytes) -> None:
        with pytest.raises(RecordError):
            NamespacedValidator().validate(key, b"x")

    def test_split_key(self) -> None:
        assert split_key(b"/ipns/\x00/x") == (b"ipns", b"\x00/x")

    def test_ipns_dispatch_uses_the_clock(self, ed: PrivateKey) -> None:
        raw = ipns.create(ed, b"/ipfs/a", 1, datetime.datetime(2030, 1, 1, tzinfo=UTC))
        key = ipns.routing_key(ed.peer_id())
        NamespacedValidator(clock=FakeClock(0)).validate(key, raw)
        with pytest.raises(RecordError, match="expired"):
            NamespacedValidator(clock=FakeClock(2e9)).validate(key, raw)

    def test_ipns_key_with_a_bad_name(self, ed: PrivateKey) -> None:
        raw = ipns.create(ed, b"/ipfs/a", 1, datetime.datetime(2030, 1, 1, tzinfo=UTC))
        with pytest.raises(RecordError, match="IPNS name"):
            NamespacedValidator().validate(b"/ipns/\x99\x01", raw)

    def test_select_with_nothing(self) -> None:
        with pytest.raises(RecordError):
            NamespacedValidator().select(b"/pk/x", [])
