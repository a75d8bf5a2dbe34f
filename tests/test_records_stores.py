"""The ValueStore contract, on the in-memory store and the SQL store (SQLite, PostgreSQL)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import text

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.data.schema import open_store
from dhtstore.records import ipns, pk
from dhtstore.records.api import RecordError, ValueStore, key_text
from dhtstore.records.memory import MemoryValueStore
from dhtstore.records.sql import SqlValueStore
from dhtstore.records.validators import NamespacedValidator
from dhtstore.types import Record

pytestmark = pytest.mark.anyio

UTC = datetime.timezone.utc
HOUR = 3600.0
T0 = 1_900_000_000.0  # 2030-03-17T17:46:40Z


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ed() -> PrivateKey:
    return PrivateKey.generate(KeyType.Ed25519)


@pytest.fixture(scope="module")
def rsa() -> PrivateKey:
    return PrivateKey.generate(KeyType.RSA)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for the in-memory store, else the URL of a migrated, empty SQL store."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_store_url")
    return url


@pytest.fixture
async def store(backend: str | None, clock: FakeClock) -> AsyncIterator[MemoryValueStore | SqlValueStore]:
    validator = NamespacedValidator(clock)
    if backend is None:
        yield MemoryValueStore(validator, clock)
        return
    engine = await open_store(backend)
    try:
        yield SqlValueStore(engine, validator, clock)
    finally:
        await engine.dispose()


def ipns_record(key: PrivateKey, seq: int, eol: float, value: bytes = b"/ipfs/a") -> Record:
    when = datetime.datetime.fromtimestamp(eol, UTC)
    return Record(ipns.routing_key(key.peer_id()), ipns.create(key, value, seq, when))


def test_implements_the_protocol() -> None:
    assert issubclass(MemoryValueStore, ValueStore)
    assert issubclass(SqlValueStore, ValueStore)


async def test_put_then_get_stamps_the_receive_time(store: ValueStore, ed: PrivateKey) -> None:
    rec = ipns_record(ed, 1, T0 + 24 * HOUR)
    kept = await store.put(rec)
    assert (kept.key, kept.value, kept.time_received) == (rec.key, rec.value, "2030-03-17T17:46:40Z")
    assert await store.get(rec.key) == kept
    assert await store.get(b"/ipns/other") is None


async def test_keeps_the_better_record(store: ValueStore, ed: PrivateKey) -> None:
    newer = ipns_record(ed, 5, T0 + HOUR)
    await store.put(newer)
    assert (await store.put(ipns_record(ed, 4, T0 + 40 * HOUR))).value == newer.value
    assert (await store.get(newer.key)).value == newer.value  # type: ignore[union-attr]
    newest = ipns_record(ed, 6, T0 + HOUR)
    assert (await store.put(newest)).value == newest.value
    assert (await store.get(newer.key)).value == newest.value  # type: ignore[union-attr]


async def test_same_record_again_refreshes_it(store: ValueStore, clock: FakeClock, ed: PrivateKey) -> None:
    rec = ipns_record(ed, 1, T0 + 47 * HOUR)
    await store.put(rec)
    clock.now += 30 * HOUR
    await store.put(rec)
    clock.now += 30 * HOUR
    assert await store.get(rec.key) is not None


async def test_records_older_than_48h_are_gone(store: MemoryValueStore | SqlValueStore, clock: FakeClock, rsa: PrivateKey) -> None:
    rec = Record(pk.routing_key(rsa.peer_id()), rsa.public_key().to_protobuf())
    await store.put(rec)
    clock.now += 48 * HOUR
    assert await store.get(rec.key) is not None
    clock.now += 1
    assert await store.get(rec.key) is None
    assert await store.count() == 0


async def test_sweep_removes_only_old_records(store: MemoryValueStore | SqlValueStore, clock: FakeClock, ed: PrivateKey, rsa: PrivateKey) -> None:
    await store.put(Record(pk.routing_key(rsa.peer_id()), rsa.public_key().to_protobuf()))
    clock.now += 40 * HOUR
    await store.put(Record(pk.routing_key(ed.peer_id()), ed.public_key().to_protobuf()))
    clock.now += 10 * HOUR
    assert await store.count() == 2
    assert await store.sweep() == 1
    assert await store.get(pk.routing_key(ed.peer_id())) is not None


async def test_a_stored_record_past_its_eol_does_not_block(store: ValueStore, clock: FakeClock, ed: PrivateKey) -> None:
    await store.put(ipns_record(ed, 9, T0 + HOUR))
    clock.now += 2 * HOUR  # past that record's EOL, well within MAX_RECORD_AGE
    fresh = ipns_record(ed, 1, clock.now + HOUR)
    assert (await store.put(fresh)).value == fresh.value


async def test_concurrent_puts_keep_the_best(store: ValueStore, ed: PrivateKey) -> None:
    records = [ipns_record(ed, seq, T0 + HOUR) for seq in (3, 7, 1, 6, 2, 5, 4)]
    async with anyio.create_task_group() as tg:
        for rec in records:
            tg.start_soon(store.put, rec)
    assert (await store.get(records[0].key)).value == records[1].value  # type: ignore[union-attr]


async def test_rejected_input_leaves_the_stored_record(store: ValueStore, clock: FakeClock, ed: PrivateKey) -> None:
    """The server's PUT_VALUE path (validate, then put): a forged IPNS record, one over
    the size limit and one in an unknown namespace change nothing."""
    validator = NamespacedValidator(clock)
    good = ipns_record(ed, 1, T0 + HOUR)
    kept = await store.put(good)

    forged = ipns.parse(ipns_record(ed, 2, T0 + HOUR).value).pb
    forged.data = ipns.encode_dag_cbor({**ipns.parse(good.value).fields, "Sequence": 99})
    attacker = PrivateKey.generate(KeyType.Ed25519)
    bad = [
        Record(good.key, forged.SerializeToString()),  # data changed after signing
        Record(good.key, ipns.create(attacker, b"/ipfs/evil", 100, datetime.datetime(2031, 1, 1, tzinfo=UTC))),
        Record(good.key, b"\x4a\x80\x50" + b"x" * 10240),  # over 10 KiB
        Record(b"/v/" + good.key, good.value),  # unknown namespace
    ]
    for rec in bad:
        with pytest.raises(RecordError):
            validator.validate(rec.key, rec.value)
        assert await store.get(good.key) == kept


async def test_sql_rows_are_readable_with_plain_sql(sqlite_store_url: str, clock: FakeClock, ed: PrivateKey) -> None:
    engine = await open_store(sqlite_store_url)
    try:
        store = SqlValueStore(engine, NamespacedValidator(clock), clock)
        await store.put(ipns_record(ed, 1, T0 + HOUR))
        async with engine.connect() as conn:
            row = (await conn.execute(text("select record_key_text, received_at from value_records"))).one()
    finally:
        await engine.dispose()
    assert row == (f"/ipns/{ed.peer_id().to_base58()}", int(T0))


def test_key_text() -> None:
    assert key_text(b"/pk/\x00\x01") == "/pk/12"
    assert key_text(b"\x00\x01") == "12"  # no namespace: the whole key in base58
