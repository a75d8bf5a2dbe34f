"""The ``dhtstore`` command group; each sub-module of ``cli`` adds its commands to it."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dhtstore")
def main() -> None:
    """A libp2p Kademlia DHT node for the IPFS Amino DHT, with its state in SQL."""
