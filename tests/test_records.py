"""/pk/ records, the Amino namespaced validator, and the in-memory value store."""

from __future__ import annotations

import datetime

import pytest

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.network.api import Record
from dhtstore.records import ipns, pk
from dhtstore.records.api import RecordError, Validator, ValueStore
from dhtstore.records.memory import MemoryValueStore
from dhtstore.records.validators import NamespacedValidator, split_key

UTC = datetime.timezone.utc
HOUR = 3600.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


def ipns_record(key: PrivateKey, seq: int, when: float, value: bytes = b"/ipfs/a") -> Record:
    eol = datetime.datetime.fromtimestamp(when, UTC)
    return Record(ipns.routing_key(key.peer_id()), ipns.create(key, value, seq, eol))


class TestMemoryValueStore:
    T0 = 1_900_000_000.0

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock(self.T0)

    @pytest.fixture
    def store(self, clock: FakeClock) -> MemoryValueStore:
        return MemoryValueStore(NamespacedValidator(clock), clock)

    def test_implements_the_protocol(self, store: MemoryValueStore) -> None:
        assert isinstance(store, ValueStore)

    @pytest.mark.anyio
    async def test_put_then_get_stamps_the_receive_time(self, store: MemoryValueStore, ed: PrivateKey) -> None:
        rec = ipns_record(ed, 1, self.T0 + 24 * HOUR)
        kept = await store.put(rec)
        assert (kept.key, kept.value) == (rec.key, rec.value)
        assert kept.time_received == "2030-03-17T17:46:40Z"
        assert await store.get(rec.key) == kept
        assert await store.get(b"/ipns/other") is None

    @pytest.mark.anyio
    async def test_keeps_the_better_record(self, store: MemoryValueStore, ed: PrivateKey) -> None:
        newer = ipns_record(ed, 5, self.T0 + HOUR)
        older = ipns_record(ed, 4, self.T0 + 40 * HOUR)
        await store.put(newer)
        kept = await store.put(older)
        assert kept.value == newer.value
        assert (await store.get(newer.key)).value == newer.value  # type: ignore[union-attr]
        assert (await store.put(ipns_record(ed, 6, self.T0 + HOUR))).value != newer.value

    @pytest.mark.anyio
    async def test_same_record_again_refreshes_it(self, store: MemoryValueStore, clock: FakeClock, ed: PrivateKey) -> None:
        rec = ipns_record(ed, 1, self.T0 + 47 * HOUR)
        await store.put(rec)
        clock.now += 30 * HOUR
        await store.put(rec)
        clock.now += 30 * HOUR
        assert await store.get(rec.key) is not None

    @pytest.mark.anyio
    async def test_records_older_than_48h_are_gone(self, store: MemoryValueStore, clock: FakeClock, rsa: PrivateKey) -> None:
        rec = Record(pk.routing_key(rsa.peer_id()), rsa.public_key().to_protobuf())
        await store.put(rec)
        clock.now += 48 * HOUR
        assert await store.get(rec.key) is not None
        clock.now += 1
        assert await store.get(rec.key) is None
        assert len(store) == 0

    @pytest.mark.anyio
    async def test_expired_stored_record_does_not_block(self, store: MemoryValueStore, clock: FakeClock, ed: PrivateKey) -> None:
        stale = ipns_record(ed, 9, self.T0 + HOUR)
        await store.put(stale)
        clock.now += 2 * HOUR  # past the stale record's EOL, within MAX_RECORD_AGE
        fresh = ipns_record(ed, 1, clock.now + HOUR)
        assert (await store.put(fresh)).value == fresh.value


class TestBadInputLeavesTheStoredRecord:
    """The server's PUT_VALUE path: validate, then store; a rejected record changes nothing."""

    T0 = 1_900_000_000.0

    async def put_checked(self, store: MemoryValueStore, validator: NamespacedValidator, rec: Record) -> Record:
        validator.validate(rec.key, rec.value)
        return await store.put(rec)

    @pytest.mark.anyio
    async def test_rejections(self, ed: PrivateKey) -> None:
        clock = FakeClock(self.T0)
        validator = NamespacedValidator(clock)
        store = MemoryValueStore(validator, clock)
        good = ipns_record(ed, 1, self.T0 + HOUR)
        kept = await self.put_checked(store, validator, good)

        forged_pb = ipns.parse(ipns_record(ed, 2, self.T0 + HOUR).value).pb
        forged_pb.data = ipns.encode_dag_cbor({**ipns.parse(good.value).fields, "Sequence": 99})
        attacker = PrivateKey.generate(KeyType.Ed25519)
        bad = [
            Record(good.key, forged_pb.SerializeToString()),  # data changed after signing
            Record(good.key, ipns.create(attacker, b"/ipfs/evil", 100, datetime.datetime(2031, 1, 1, tzinfo=UTC))),
            Record(good.key, b"\x4a\x80\x50" + b"x" * 10240),  # over 10 KiB
            Record(b"/v/" + good.key, good.value),  # unknown namespace
        ]
        for rec in bad:
            with pytest.raises(RecordError):
                await self.put_checked(store, validator, rec)
            assert await store.get(good.key) == kept
