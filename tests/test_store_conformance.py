"""The stores satisfy their Protocols, as go's ``var _ ProviderStore = (*ProviderManager)(nil)``
checks: the assignments below are type-checked by mypy --strict (the test runs it), so
an implementation that drifts from its Protocol fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from dhtstore.providerstore.api import ProviderStore
from dhtstore.providerstore.memory import MemoryProviderStore
from dhtstore.providerstore.sql import SqlProviderStore
from dhtstore.records.api import ValueStore
from dhtstore.records.memory import MemoryValueStore
from dhtstore.records.sql import SqlValueStore
from dhtstore.records.validators import NamespacedValidator


def _conforming(engine: AsyncEngine) -> tuple[ProviderStore, ProviderStore, ValueStore, ValueStore]:
    """Never called: what mypy checks."""
    validator = NamespacedValidator()
    sql_providers: ProviderStore = SqlProviderStore(engine)
    memory_providers: ProviderStore = MemoryProviderStore()
    sql_values: ValueStore = SqlValueStore(engine, validator)
    memory_values: ValueStore = MemoryValueStore(validator)
    return sql_providers, memory_providers, sql_values, memory_values


def test_the_stores_type_check_as_their_protocols() -> None:
    here = Path(__file__)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(here)],
        cwd=here.parent.parent, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
