"""``dhtstore db``: migrate the store and look inside it."""

from __future__ import annotations

import time

import click
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from ..data.engine import (
    OPEN_ERRORS,
    describe_open_error,
    ensure_sqlite_dir,
    make_engine,
    parse_store_url,
    redact,
    sqlite_path,
)
from ..data.schema import alembic_config, current_revision, head_revision, open_store
from ..data.stats import store_stats
from ..errors import StoreError
from .common import Location, fail, location_options, run
from .group import main


@main.group()
def db() -> None:
    """Migrate the store's schema and show what it holds."""


def _alembic(where: Location, action: str, *args: str, create: bool = False) -> None:
    """Run an Alembic command on the store; a store that does not open is one line."""
    url = run(_resolve, where)
    _check_exists(url, create)
    try:
        getattr(command, action)(alembic_config(url), *args)
    except StoreError as exc:
        raise fail(str(exc)) from None
    except OPEN_ERRORS as exc:
        raise fail(describe_open_error(url, exc)) from None
    except CommandError as exc:  # e.g. an unknown revision
        raise fail(f"{action} failed on {redact(url)}: {exc}") from None


async def _resolve(where: Location) -> str:
    return where.store_url()


def _check_exists(url: str, create: bool) -> None:
    """Refuse a SQLite store file that is not there (unless creating it): opening would create it."""
    try:
        parsed = parse_store_url(url)
    except StoreError as exc:
        raise fail(str(exc)) from None
    path = sqlite_path(parsed)
    if path is not None and not path.exists():
        if not create:
            raise fail(f"no store at {path}: run `dhtstore init` or `dhtstore db upgrade`")
        try:
            ensure_sqlite_dir(parsed)
        except StoreError as exc:
            raise fail(str(exc)) from None


@db.command()
@click.argument("revision", default="head")
@location_options
def upgrade(where: Location, revision: str) -> None:
    """Migrate the store up to REVISION (default: the newest), creating it if needed."""
    _alembic(where, "upgrade", revision, create=True)
    run(_current, where)


@db.command()
@click.argument("revision")
@location_options
def downgrade(where: Location, revision: str) -> None:
    """Migrate the store down to REVISION ("base" removes every table)."""
    _alembic(where, "downgrade", revision)
    run(_current, where)


@db.command()
@location_options
def current(where: Location) -> None:
    """Show the store's schema revision."""
    run(_current, where)


async def _current(where: Location) -> None:
    url = where.store_url()
    _check_exists(url, create=False)
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(current_revision)
    except OPEN_ERRORS as exc:
        raise StoreError(describe_open_error(url, exc)) from None
    finally:
        await engine.dispose()
    head = head_revision()
    state = "not initialised" if found is None else f"revision {found}" + (" (head)" if found == head else f" (code's head: {head})")
    click.echo(f"{redact(url)}: {state}")


@db.command()
def history() -> None:
    """List the schema revisions this dhtstore knows."""
    try:
        script = ScriptDirectory.from_config(alembic_config())
    except StoreError as exc:
        raise fail(str(exc)) from None
    for rev in script.walk_revisions():  # newest first
        head = " (head)" if rev.is_head else ""
        click.echo(f"{rev.down_revision or '<base>'} -> {rev.revision}{head}: {rev.doc}")


@db.command()
@location_options
def stats(where: Location) -> None:
    """Rows per table, provider records expiring within the hour, and store size."""
    run(_stats, where)


async def _stats(where: Location) -> None:
    url = where.store_url()
    engine = await open_store(url)
    try:
        s = await store_stats(engine, time.time())
    except OPEN_ERRORS as exc:
        raise StoreError(describe_open_error(url, exc)) from None
    finally:
        await engine.dispose()
    click.echo(f"store: {redact(url)}")
    width = max(map(len, s.rows))
    for table, count in s.rows.items():
        click.echo(f"  {table:<{width}}  {count:>12,}")
    click.echo(f"provider records expiring within the hour: {s.provider_records_expiring_within_hour:,}")
    click.echo("size: " + ("unknown" if s.size_bytes is None else f"{s.size_bytes:,} bytes"))

