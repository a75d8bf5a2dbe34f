"""The conformance file (``typing_conformance.py``) type-checks, and a drifted
implementation makes the same check fail: the pins really pin."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is a test dependency: pip install -e '.[test]'")

HERE = Path(__file__).resolve().parent

DRIFTED = '''
from __future__ import annotations

from dhtstore.kadkey import Key
from dhtstore.routingtable.api import RoutingTable
from dhtstore.routingtable.kbuckets import KBucketTable
from dhtstore.types import PeerInfo


class DriftedTable(KBucketTable):
    def local_closest_peers(self, key: Key, n: int, *, alive: bool) -> list[PeerInfo]:  # type: ignore[override]
        return []


def routing_table(impl: DriftedTable) -> RoutingTable:
    return impl
'''


def _errors(*paths: Path) -> list[str]:
    stdout, stderr, _ = mypy_api.run(["--strict", "--no-error-summary", "--hide-error-context", *map(str, paths)])
    assert not stderr, stderr
    return [line for line in stdout.splitlines() if ": error:" in line]


def test_conformance_pins_hold_and_catch_drift(tmp_path: Path) -> None:
    drifted = tmp_path / "drifted_conformance.py"
    drifted.write_text(DRIFTED)
    errors = _errors(HERE / "typing_conformance.py", drifted)
    in_pins = [e for e in errors if "typing_conformance.py" in e]
    assert not in_pins, "an implementation no longer satisfies its Protocol:\n" + "\n".join(in_pins)
    in_drifted = [e for e in errors if e.startswith(str(drifted)) or "drifted_conformance.py" in e]
    assert any("Incompatible return value type" in e for e in in_drifted), errors
