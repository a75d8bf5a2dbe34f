"""Schema revisions: Alembic driven from code, and the guard that refuses a store
whose revision is not the code's.

The revisions live in the top-level ``migrations/`` directory of the source tree, which
a built wheel ships as ``dhtstore/migrations`` (see ``setup.py``). Every function here
works both from synchronous code (the CLI) and inside a running event loop (the node,
tests): migrations run on a connection of the async engine via ``run_sync``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import StoreError
from .engine import (
    OPEN_ERRORS,
    describe_open_error,
    ensure_sqlite_dir,
    make_engine,
    parse_store_url,
    redact,
    sqlite_path,
)

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# An installed wheel first, then a source checkout (an editable install).
MIGRATIONS_DIRS = (_PACKAGE_DIR / "migrations", _PACKAGE_DIR.parent / "migrations")


def migrations_dir() -> Path:
    for candidate in MIGRATIONS_DIRS:
        if (candidate / "env.py").is_file():
            return candidate
    looked = " or ".join(str(d) for d in MIGRATIONS_DIRS)
    raise StoreError(f"the schema revisions are missing (looked in {looked}): reinstall dhtstore")


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for our migrations, on ``url`` or on an open ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.attributes["url"] = url
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def head_revision() -> str:
    """The schema revision this code expects."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/ has no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the store behind ``engine`` up to ``revision``."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(connection=c), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(connection=c), revision))


def check_revision(store: str, found: str | None, has_tables: bool) -> None:
    """Raise StoreError unless the store is at the code's head revision."""
    head = head_revision()
    if found == head:
        return
    if found is None:
        what = "has tables but no schema revision" if has_tables else "is not initialised"
        raise StoreError(f"store {store} {what}: run `dhtstore db upgrade` (or `dhtstore init`)")
    if found in _known_revisions():
        raise StoreError(f"store {store} is at schema revision {found}, older than this dhtstore's {head}: run `dhtstore db upgrade`")
    raise StoreError(
        f"store {store} is at schema revision {found}, newer than this dhtstore's {head}: "
        f"upgrade dhtstore, or run `dhtstore db downgrade {head}` with the newer dhtstore"
    )


async def open_store(url: str, *, durable_commits: bool = False, **engine_kwargs: object) -> AsyncEngine:
    """An engine on a store that exists and is at the code's schema revision.

    Raises StoreError (one line: what is wrong and what to do) otherwise; never creates
    a store. Dispose of the engine when done.
    """
    parsed = parse_store_url(url)
    path = sqlite_path(parsed)
    if path is not None and not path.is_file():
        raise StoreError(f"no store at {path}: run `dhtstore init` (or `dhtstore db upgrade` to create it)")
    engine = make_engine(parsed, durable_commits=durable_commits, **engine_kwargs)
    try:
        async with engine.connect() as conn:
            found, has_tables = await conn.run_sync(lambda c: (current_revision(c), bool(set(inspect(c).get_table_names()) - {"alembic_version"})))
        check_revision(redact(url), found, has_tables)
    except StoreError:
        await engine.dispose()
        raise
    except OPEN_ERRORS as exc:
        await engine.dispose()
        raise StoreError(describe_open_error(parsed, exc)) from None
    return engine


async def create_or_upgrade(url: str) -> None:
    """Create the store if needed (the SQLite file and its directory) and migrate it to head."""
    parsed = parse_store_url(url)
    ensure_sqlite_dir(parsed)
    engine = make_engine(parsed)
    try:
        await upgrade(engine)
    except OPEN_ERRORS as exc:
        raise StoreError(describe_open_error(parsed, exc)) from None
    finally:
        await engine.dispose()
