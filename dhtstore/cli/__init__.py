"""The ``dhtstore`` command: the group, whose sub-modules register their commands when
one of them runs (``group.LazyGroup``)."""

from __future__ import annotations

from .group import main

__all__ = ["main"]
