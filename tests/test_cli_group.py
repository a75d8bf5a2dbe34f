"""The ``dhtstore`` group loads a command's module only when that command runs."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import dhtstore.cli
from dhtstore.cli.group import COMMAND_MODULES, main


def test_every_command_a_module_defines_is_in_the_lazy_map() -> None:
    for module in pkgutil.iter_modules(dhtstore.cli.__path__):
        importlib.import_module(f"dhtstore.cli.{module.name}")
    assert set(main.commands) == set(COMMAND_MODULES)
    db = main.commands["db"]
    assert "copy" in db.commands  # type: ignore[attr-defined]  # a group: db copy comes from cli.copy


def test_provide_status_loads_neither_the_node_nor_the_other_commands() -> None:
    # A fresh interpreter: what `dhtstore provide --help` imports, printed by the child.
    code = (
        "import sys; from click.testing import CliRunner; from dhtstore.cli import main; "
        "r = CliRunner().invoke(main, ['provide', 'status', '--help']); assert r.exit_code == 0, r.output; "
        "print(' '.join(m for m in sys.modules if m.startswith('dhtstore.')))"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert "dhtstore.cli.provide" in loaded
    heavy = ("dhtstore.node", "dhtstore.httpapi", "dhtstore.routing", "dhtstore.server", "dhtstore.cli.run", "dhtstore.data.copy")
    assert not {m for m in loaded if m.startswith(heavy)}
