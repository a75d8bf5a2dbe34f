"""``dhtstore db``: migrate the store and look inside it."""

from __future__ import annotations

import json
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
@click.option("--json", "as_json", is_flag=True, help='Print {"store", "revision", "head", "at_head"} as JSON.')
def current(where: Location, as_json: bool) -> None:
    """Show the store's schema revision.

    --json fields: store (the URL, password hidden), revision (null when not
    initialised), head (the code's newest revision), at_head (true or false)."""
    run(_current, where, as_json)


async def _current(where: Location, as_json: bool = False) -> None:
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
    if as_json:
        click.echo(json.dumps({"store": redact(url), "revision": found, "head": head, "at_head": found == head}))
        return
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
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats(where: Location, as_json: bool) -> None:
    """Rows per table, provider records expiring within the hour, and store size.

    --json fields: store (the URL, password hidden), rows (table name -> row count,
    every table), provider_records_expiring_within_hour, size_bytes (null when the
    database cannot tell)."""
    run(_stats, where, as_json)


async def _stats(where: Location, as_json: bool) -> None:
    url = where.store_url()
    engine = await open_store(url)
    try:
        s = await store_stats(engine, time.time())
    except OPEN_ERRORS as exc:
        raise StoreError(describe_open_error(url, exc)) from None
    finally:
        await engine.dispose()
    if as_json:
        fields = {"rows": s.rows, "provider_records_expiring_within_hour": s.provider_records_expiring_within_hour, "size_bytes": s.size_bytes}
        click.echo(json.dumps({"store": redact(url), **fields}))
        return
    click.echo(f"store: {redact(url)}")
    width = max(map(len, s.rows))
    for table, count in s.rows.items():
        click.echo(f"  {table:<{width}}  {count:>12,}")
    click.echo(f"provider records expiring within the hour: {s.provider_records_expiring_within_hour:,}")
    click.echo("size: " + ("unknown" if s.size_bytes is None else f"{s.size_bytes:,} bytes"))

