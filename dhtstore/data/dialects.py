"""What differs between the two supported databases, in one place.

Both SQLite and PostgreSQL have ``INSERT … ON CONFLICT``; SQLAlchemy gives it through
each dialect's own ``insert``, so every upsert picks the dialect's here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine


def is_postgresql(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def dialect_insert(engine: AsyncEngine) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_nothing`` / ``_do_update``)."""
    return postgresql.insert if is_postgresql(engine) else sqlite.insert


def upsert(engine: AsyncEngine, model: Any, conflict: list[str], update: list[str]) -> Any:
    """``INSERT INTO model … ON CONFLICT (conflict) DO UPDATE SET`` each of ``update``
    to the value the statement tried to insert."""
    stmt = dialect_insert(engine)(model)
    return stmt.on_conflict_do_update(index_elements=conflict, set_={c: stmt.excluded[c] for c in update})
