"""Database failures become the store API's one error, ``StoreUnavailable``.

Every store (provider records, value records, the peer book, the provide list and its
claims) runs its SQL inside ``unavailable(...)`` or as a ``store_call`` method, so its
callers catch ``dhtstore.errors.StoreUnavailable`` and never a driver's or
SQLAlchemy's own exception.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import anyio
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from ..errors import StoreUnavailable
from .engine import OPEN_ERRORS

# What a database that does not answer, or refuses, raises through SQLAlchemy's async
# drivers; asyncpg may raise its own errors while a connection is set up, and the
# plain sqlite3 reader (``data.sqlitereader``) sqlite3's.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *OPEN_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error,
)

STORE_CALL_BOUND = 30.0  # seconds a started store call may run on after its caller was cancelled

P = ParamSpec("P")
T = TypeVar("T")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a driver's can run to many lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextmanager
def unavailable(what: str, on_failure: Callable[[BaseException], None] | None = None) -> Iterator[None]:
    """Raise StoreUnavailable ("<what>: <reason>") for a database failure in the block,
    after telling ``on_failure`` (a store's health monitor) the original error."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        if on_failure is not None:
            on_failure(exc)
        raise StoreUnavailable(f"{what}: {first_line(exc)}") from exc


def store_call(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A store method that raises ``StoreUnavailable``, never a driver's error, and that
    once started runs to its end even when its caller is cancelled (for at most
    STORE_CALL_BOUND): a statement cut half-way leaves SQLAlchemy an aiosqlite
    connection to close whose close may never return, and the process then hangs at
    exit on that connection's thread. Cancellation takes effect when the call returns."""
    what = f"{fn.__qualname__} failed, the store did not answer"

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + STORE_CALL_BOUND):
            with unavailable(what):
                return await fn(*args, **kwargs)
        raise StoreUnavailable(f"{what} within {STORE_CALL_BOUND:.0f} s")

    return call
