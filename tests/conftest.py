"""Shared test fixtures.

Tests that need PostgreSQL or Node.js skip with the reason on a machine without them;
with DHTSTORE_REQUIRE_ALL=1 (set by .ci/run) such a skip is a failure instead, so CI
always runs them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ALL = os.environ.get("DHTSTORE_REQUIRE_ALL") == "1"

# Python prints nested exception groups only 10 deep, and a failure inside a node or a
# harness (task groups within task groups) sits deeper: the report would end in "...".
traceback.TracebackException.__init__.__kwdefaults__["max_group_depth"] = 100
PG_URL = os.environ.get("DHTSTORE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def skip_or_fail(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"required by DHTSTORE_REQUIRE_ALL=1 but unavailable: {reason}")
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a reachable PostgreSQL, or skip (fail under DHTSTORE_REQUIRE_ALL=1)."""
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    if not _port_open(url.host or "127.0.0.1", url.port or 5432):
        skip_or_fail(f"PostgreSQL not reachable at {url.host}:{url.port} (set DHTSTORE_TEST_PG_URL)")
    return PG_URL


@pytest.fixture(scope="session")
def node_bin() -> str:
    """Path of the node executable, or skip (fail under DHTSTORE_REQUIRE_ALL=1)."""
    path = shutil.which("node")
    if path is None:
        skip_or_fail("Node.js not installed (needed for the js-libp2p interop tests)")
    return path


# --- SQL stores (data tier) -------------------------------------------------------
# Fixtures for any test of a SQL-backed component: a migrated, empty store on SQLite
# (a file in tmp_path) and on PostgreSQL (a database created for this test session and
# dropped after it), and ``store_url`` parametrised over both.


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion, also from a fixture set up inside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _pg_admin(url: str, *statements: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = await asyncpg.connect(
        user=u.username, password=u.password, host=u.host, port=u.port or 5432, database=u.database
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _pg_scratch_database(pg_url: str) -> Iterator[str]:
    from sqlalchemy.engine import make_url

    name = f"dhtstore_t_{secrets.token_hex(6)}"
    _run(_pg_admin(pg_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _run(_pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_empty_database_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL database with nothing in it, private to this test session."""
    yield from _pg_scratch_database(pg_url)


@pytest.fixture
def pg_scratch_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own (for tests that migrate up and down)."""
    yield from _pg_scratch_database(pg_url)


@pytest.fixture(scope="session")
def _pg_migrated_url(pg_url: str) -> Iterator[str]:
    from dhtstore.data.schema import create_or_upgrade

    for url in _pg_scratch_database(pg_url):
        _run(create_or_upgrade(url))
        yield url


@pytest.fixture
def pg_store_url(_pg_migrated_url: str) -> str:
    """A PostgreSQL store at the head revision, emptied before each test."""
    from dhtstore.data.models import metadata
    from dhtstore.data.schema import head_revision

    # DELETE, not TRUNCATE: on near-empty tables it is several times faster.
    # Derived tables last: emptying provided_keys adds to its counters (revision 0005).
    tables = sorted(reversed(metadata.sorted_tables), key=lambda t: bool(t.info.get("derived")))
    empty = [f"DELETE FROM {t.name}" for t in tables]
    _run(_pg_admin(_pg_migrated_url, *empty, f"UPDATE alembic_version SET version_num = '{head_revision()}'"))
    return _pg_migrated_url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dhtstore.data.engine import default_store_url
    from dhtstore.data.schema import create_or_upgrade

    directory = tmp_path_factory.mktemp("sqlite-template")
    _run(create_or_upgrade(default_store_url(directory)))
    return directory / "dhtstore.db"


@pytest.fixture
def sqlite_store_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """A SQLite store file in tmp_path, at the head revision and empty."""
    from dhtstore.data.engine import default_store_url

    (tmp_path / "store").mkdir()
    shutil.copyfile(_sqlite_template, tmp_path / "store" / "dhtstore.db")  # WAL was checkpointed at close
    return default_store_url(tmp_path / "store")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store with no tables yet (for migrations), once on SQLite and once on PostgreSQL."""
    from dhtstore.data.engine import default_store_url

    if request.param == "sqlite":
        return default_store_url(tmp_path)
    return str(request.getfixturevalue("pg_empty_database_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty store, once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_store_url")


@pytest.fixture
def count_provider_records() -> Callable[[str], Coroutine[Any, Any, int]]:
    """An async function: the number of provider_records rows in the store at a URL."""
    from sqlalchemy import func, select

    from dhtstore.data.engine import make_engine
    from dhtstore.data.models import ProviderRecordRow

    async def count(url: str) -> int:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(select(func.count()).select_from(ProviderRecordRow))).scalar_one()
        finally:
            await engine.dispose()

    return count


# --- dhtstore nodes on loopback ---------------------------------------------------


@pytest.fixture
def loopback_options() -> Callable[..., Any]:
    """A factory of NodeOptions for a node on 127.0.0.1 that admits loopback peers."""
    from dhtstore.crypto.keys import PrivateKey
    from dhtstore.node import NodeOptions

    def make(
        store_url: str | None = None,
        bootstrap: Sequence[str] = (),
        *,
        mode: str = "server",
        identity: PrivateKey | None = None,
        reprovide: bool = False,
        listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    ) -> NodeOptions:
        return NodeOptions(
            identity=identity or PrivateKey.generate(),
            store_url=store_url,
            listen=list(listen),
            bootstrap=list(bootstrap),
            mode=mode,
            allow_private_addrs=True,
            ip_diversity=False,
            reprovide=reprovide,
        )

    return make
