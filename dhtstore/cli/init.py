"""``dhtstore init``: a data directory with an identity, a config file and a migrated store."""

from __future__ import annotations

import click

from ..config import Config, read_identity, render, write_new_identity
from ..data.engine import redact
from ..data.schema import create_or_upgrade, head_revision
from .common import Location, identity_option, location_options, run
from .group import main


@main.command()
@location_options
@identity_option
def init(where: Location) -> None:
    """Create the data directory, identity key, config file and store.

    Safe to run again: an existing identity key and config file are kept as they are,
    and the store is only migrated forward. With ``--identity NAME`` it adds (or keeps)
    the named identity identities/NAME.key beside the others.
    """
    run(_init, where)


async def _init(where: Location) -> None:
    where.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if where.identity_file.exists():
        key = read_identity(where.identity_file, where.init_command)
        click.echo(f"identity: kept existing {where.identity_file}")
    else:
        key = write_new_identity(where.identity_file)
        click.echo(f"identity: created {where.identity_file} (Ed25519, mode 600)")
    if where.config_file.exists():
        click.echo(f"config:   kept existing {where.config_file}")
    else:
        # 0600: a PostgreSQL URL in it may carry a password.
        where.config_file.touch(mode=0o600)
        where.config_file.write_text(render(Config(store=where.store_option or "")))
        click.echo(f"config:   created {where.config_file}")
    url = where.store_url()
    await create_or_upgrade(url)
    click.echo(f"store:    {redact(url)} at schema revision {head_revision()}")
    click.echo(f"peer id:  {key.peer_id()} (identity {where.identity})")
