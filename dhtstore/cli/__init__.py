"""The ``dhtstore`` command. Each sub-module adds its commands to ``main``."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dhtstore")
def main() -> None:
    """A libp2p Kademlia DHT node for the IPFS Amino DHT, with its state in SQL."""


# Sub-commands register themselves on import (one line per module).
from . import (
    copy,  # noqa: E402,F401
    db,  # noqa: E402,F401
    init,  # noqa: E402,F401
    provide,  # noqa: E402,F401
)
from . import run as _run  # noqa: E402,F401
