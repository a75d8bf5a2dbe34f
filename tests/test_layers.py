"""The layer diagram of README.md ("Layers"), checked by walking every import (``ast``).

- An import from one unit to another points down: to a unit of a lower layer.
- Outside the composition roots (``node``, the simulation harness ``sim``, the ``cli``), a
  module is used through its ``api.py`` (or, for the free-function packages ``dht`` and
  ``ipfs``, the package itself), plus the helper modules listed in ``PUBLIC``.
- No two files import each other, directly or through others.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dhtstore"

# Lower numbers are lower layers. The core (shared value types, errors, ids, keys,
# constants) may import within itself as long as no file import circle forms.
CORE = {"types", "errors", "peerid", "kadkey", "multihash", "varint", "amino", "crypto", "pb"}
LAYER = {
    **{unit: 0 for unit in CORE},
    "data": 10,
    "network": 20,
    "records": 20,
    "providerstore": 20,
    "routingtable": 20,
    "dht": 30,
    "ipfs": 31,
    "routing": 40,
    "server": 50,
    "provider": 50,
    "rtrefresh": 50,
    "peerbook": 50,
    "metrics": 60,
    "httpapi": 60,
    "config": 60,
    "node": 70,
    "sim": 80,
    "cli": 90,
    "__main__": 100,
    "__init__": 100,
}
# Units whose implementation files only the composition roots may import.
MODULES = {
    "network", "records", "providerstore", "routingtable", "routing", "server", "provider", "rtrefresh", "dht", "ipfs", "httpapi",
}
COMPOSITION_ROOTS = {"cli", "node", "sim"}  # as README's diagram: the CLI opens a provide list without a node
# Helper modules other modules may use besides ``api`` (value types and pure functions).
PUBLIC = {
    "network": {"multiaddrs", "dnsaddr"},
    "provider": {"cids"},
    "records": {"ipns"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The dhtstore modules ``path`` imports (``from x import y`` counts ``x.y`` when
    ``y`` is a module, else ``x``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dhtstore"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("dhtstore"):
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


GRAPH = _graph()


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in GRAPH}
    assert units <= LAYER.keys(), f"give these a layer in LAYER (and README's diagram): {sorted(units - LAYER.keys())}"


def test_imports_point_down() -> None:
    upward = []
    for module, targets in GRAPH.items():
        here = _unit(module)
        for target in targets:
            there = _unit(target)
            if there == here or (here in CORE and there in CORE):
                continue
            if LAYER[there] >= LAYER[here]:
                upward.append(f"{module} -> {target} (layer {LAYER[here]} -> {LAYER[there]})")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


def test_modules_are_used_through_their_api() -> None:
    reaching_in = []
    for module, targets in GRAPH.items():
        here = _unit(module)
        if here in COMPOSITION_ROOTS:
            continue
        for target in targets:
            there = _unit(target)
            parts = target.split(".")
            if there == here or there not in MODULES or len(parts) < 3:
                continue
            if parts[2] != "api" and parts[2] not in PUBLIC.get(there, set()):
                reaching_in.append(f"{module} -> {target}")
    assert not reaching_in, "use the module's api.py instead:\n" + "\n".join(sorted(reaching_in))


def test_no_import_circles() -> None:
    cycles = []
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH:
                continue
            if state[target] == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif state[target] == 0:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if state[module] == 0:
            visit(module)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..routing.router import KademliaRouter\n", {"dhtstore.routing.router"}),
        ("from .. import amino\n", {"dhtstore.amino"}),
        ("from ..types import PeerInfo\n", {"dhtstore.types"}),
    ],
)
def test_the_walk_sees_relative_imports(tmp_path: Path, source: str, expected: set[str]) -> None:
    """The checker itself: a relative import in ``dhtstore/server/x.py`` resolves."""
    fake = PACKAGE / "server" / "_layers_probe.py"
    fake.write_text(source)
    try:
        assert _imports(fake) == expected
    finally:
        fake.unlink()
