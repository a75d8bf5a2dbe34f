"""The ``dhtstore`` command group. Each sub-module of ``cli`` adds its commands to it when
imported, and the group imports a sub-module only when one of its commands runs (or help
lists them): ``dhtstore provide status`` need not load the node's network stack."""

from __future__ import annotations

import importlib

import click

# Each command, and the modules that define it and its subcommands.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "db": ("dhtstore.cli.db", "dhtstore.cli.copy"),
    "init": ("dhtstore.cli.init",),
    "provide": ("dhtstore.cli.provide",),
    "routing": ("dhtstore.cli.routing",),
    **{name: ("dhtstore.cli.run",) for name in ("run", "findprovs", "findpeer", "closest", "get", "put")},
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in COMMAND_MODULES.get(cmd_name, ()):
            importlib.import_module(module)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dhtstore")
def main() -> None:
    """A libp2p Kademlia DHT node for the IPFS Amino DHT, with its state in SQL."""
