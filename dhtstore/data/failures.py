"""Database failures become the store API's one error, ``StoreUnavailable``.

Every store (provider records, value records, the peer book) runs its SQL inside
``unavailable(...)``, so its callers catch ``dhtstore.errors.StoreUnavailable`` and
never a driver's or SQLAlchemy's own exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import StoreUnavailable
from .engine import OPEN_ERRORS


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
    except OPEN_ERRORS as exc:
        if on_failure is not None:
            on_failure(exc)
        raise StoreUnavailable(f"{what}: {first_line(exc)}") from exc
