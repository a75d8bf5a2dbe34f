"""Revision 0006: the provide list's counters, filled from the rows at upgrade, then kept
exact by triggers through add, remove, marks, import and concurrent writers."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from dhtstore.data.engine import default_store_url, make_engine
from dhtstore.data.models import ProvideCounterRow, ProvidedKeyRow
from dhtstore.data.schema import downgrade, upgrade
from dhtstore.provider import providelist
from dhtstore.provider.api import FAILING_AFTER_ATTEMPTS, Counts
from dhtstore.provider.providelist import FOLD_COUNTERS_AFTER, ProvideListStore

pytestmark = pytest.mark.anyio

NOW = 1_900_000_000
INTERVAL = 22 * 3600
LATE = 3600


def _mh(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"counter %d" % i).digest()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield default_store_url(tmp_path)
        return
    yield request.getfixturevalue("pg_scratch_url")  # a database of its own: these tests migrate up and down


async def brute_counts(engine: AsyncEngine) -> Counts:
    """The counts the way the status computed them before 0006: filters over every row."""
    k = ProvidedKeyRow
    stmt = select(
        func.count(),
        func.count().filter(k.last_provided_at.is_(None)),
        func.count().filter(k.last_provided_at > NOW - INTERVAL),
        func.count().filter(k.next_due_at <= NOW),
        func.count().filter(k.attempts >= FAILING_AFTER_ATTEMPTS),
        func.count().filter((k.last_provided_at < NOW - INTERVAL - LATE) | (k.last_provided_at.is_(None) & (k.added_at < NOW - LATE))),
    )
    async with engine.connect() as conn:
        return Counts(*(await conn.execute(stmt)).one())


def _old_rows(n: int) -> list[dict[str, object]]:
    """Rows in every state a key can be in: never provided (new or long ago), provided
    recently or long ago, failing, due or not."""
    rng = random.Random(5)
    rows = []
    for i in range(n):
        provided = rng.choice([None, NOW - 60, NOW - INTERVAL - 10, NOW - 3 * INTERVAL])
        rows.append(
            {
                "cid": f"cid{i}",
                "multihash": _mh(i),
                "kad_key": hashlib.sha256(_mh(i)).digest(),
                "added_at": rng.choice([NOW - 5, NOW - 5 * INTERVAL]),
                "last_provided_at": provided,
                "next_due_at": NOW + rng.randint(-INTERVAL, INTERVAL),
                "attempts": rng.choice([0, 0, 1, FAILING_AFTER_ATTEMPTS, FAILING_AFTER_ATTEMPTS + 2]),
                "last_error": None,
            }
        )
    return rows


async def test_upgrade_from_0005_fills_the_counters_and_writes_keep_them_exact(empty_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(empty_url)
    try:
        await upgrade(engine, "0005")
        async with engine.begin() as conn:
            await conn.execute(insert(ProvidedKeyRow), _old_rows(600))
        before = await brute_counts(engine)

        await upgrade(engine)
        store = ProvideListStore(engine)
        assert await store.counts(NOW, INTERVAL, LATE) == before == await brute_counts(engine)

        # Add (new and already listed), remove (listed and not), marks in both directions.
        added = await store.add([(f"new{i}", _mh(i)) for i in range(550, 900)], NOW)
        assert added.added == 300
        assert await store.remove([_mh(i) for i in range(100)] + [_mh(10_000)]) == 100
        await store.mark_provided([_mh(i) for i in range(100, 400)], NOW - 1, NOW + INTERVAL)
        for _ in range(FAILING_AFTER_ATTEMPTS):
            await store.mark_failed([_mh(i) for i in range(380, 700)], "unreachable", NOW + 60)
        got = await store.counts(NOW, INTERVAL, LATE)
        assert got == await brute_counts(engine)
        assert got.keys == 800 and got.failing >= 320
        for cap in (2, 5, 60):  # each count from its smaller side, in rounds (at 10M the first cap is 1,000)
            monkeypatch.setattr(providelist, "COUNT_FIRST_CAP", cap)
            assert await store.counts(NOW, INTERVAL, LATE) == got
        monkeypatch.undo()

        # Downgrade keeps every row and drops the counters; upgrading again refills them.
        await downgrade(engine, "0005")
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(ProvidedKeyRow))).scalar_one() == 800
        await upgrade(engine)
        assert await ProvideListStore(engine).counts(NOW, INTERVAL, LATE) == got
    finally:
        await downgrade(engine, "base")
        await engine.dispose()


async def test_counts_stay_exact_under_concurrent_writers(empty_url: str) -> None:
    """Several writers at once (on PostgreSQL: several connections, as processes sharing
    the store do): adds, removes and marks interleaved, overlapping on purpose."""
    engine = make_engine(empty_url)
    try:
        await upgrade(engine)
        store = ProvideListStore(engine)

        async def writer(w: int) -> None:
            rng = random.Random(w)
            for step in range(12):
                batch = [_mh(rng.randrange(3000)) for _ in range(150)]
                match step % 4:
                    case 0 | 1:
                        await store.add([(mh.hex(), mh) for mh in batch], NOW - LATE * 2)
                    case 2:
                        await store.mark_provided(batch, NOW - rng.choice([1, INTERVAL + 5]), NOW + 100)
                    case 3:
                        await store.remove(batch[:50])
                        await store.mark_failed(batch[50:], "x", NOW + 5)

        async with anyio.create_task_group() as tg:
            for w in range(4):
                tg.start_soon(writer, w)
        counts = await store.counts(NOW, INTERVAL, LATE)
        assert counts == await brute_counts(engine)
        assert counts.keys > 0 and counts.pending > 0

        if engine.dialect.name == "postgresql":  # one row of deltas per writing statement, folded past a bound
            async with engine.connect() as conn:
                rows = (await conn.execute(select(func.count()).select_from(ProvideCounterRow))).scalar_one()
            assert rows <= FOLD_COUNTERS_AFTER + 1
            assert await store.counts(NOW, INTERVAL, LATE) == counts
    finally:
        await downgrade(engine, "base")
        await engine.dispose()
