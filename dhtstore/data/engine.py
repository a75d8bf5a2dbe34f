"""The one engine factory, and opening a store whose schema matches the code.

A store is a database URL: ``sqlite+aiosqlite:///<path>`` (the default, one file in the
data directory) or ``postgresql+asyncpg://…``; the same code and migrations run on both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import StoreError

STORE_FILE_NAME = "dhtstore.db"
SQLITE_BUSY_TIMEOUT_MS = 10_000  # a second writer (the CLI beside a running node) waits, not fails


def default_store_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{Path(data_dir).expanduser().resolve() / STORE_FILE_NAME}"


def parse_store_url(url: str) -> URL:
    """Parse and check a store URL; only the async drivers we run on are accepted."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"not a database URL: {url!r} (expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://…)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise StoreError(f"unsupported store {backend!r} in {redact(url)}: use SQLite or PostgreSQL")
    return parsed


def redact(url: str | URL) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite store; None for PostgreSQL or an in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _sqlite_pragmas(synchronous: str) -> Any:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return set_pragmas


def make_engine(url: str | URL, *, durable_commits: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``. SQLite gets WAL, synchronous=NORMAL, foreign keys
    and a busy timeout on every connection; PostgreSQL a pre-ping on checkout.

    ``durable_commits``: SQLite syncs the WAL at each commit (synchronous=FULL), so a
    commit survives a power loss or OS crash as soon as it returns. With NORMAL the WAL
    is synced only by a checkpoint, which a reader of an older snapshot can hold back:
    right for the node's own writes, not for a command that reports what it wrote.
    PostgreSQL's commits are durable either way."""
    parsed = parse_store_url(str(url) if isinstance(url, str) else url.render_as_string(hide_password=False))
    if parsed.get_backend_name() == "postgresql":
        # A server restart leaves dead connections in the pool: test each on checkout.
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas("FULL" if durable_commits else "NORMAL"))
    return engine


def describe_open_error(url: str | URL, exc: BaseException) -> str:
    """One line for a store that did not open: the URL (no password) and the cause."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot open store {redact(url)}: {text}"


def ensure_sqlite_dir(url: URL) -> None:
    path = sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store's directory {path.parent}: {exc.strerror}") from None


def store_size_bytes(url: URL) -> int | None:
    """Bytes the SQLite store takes on disk (database + WAL); None for PostgreSQL."""
    path = sqlite_path(url)
    if path is None:
        return None
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


OPEN_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, ConnectionError)
