"""The ``dhtstore`` command: the group, with every sub-module's commands registered."""

from __future__ import annotations

from . import copy, db, init, provide, routing, run  # noqa: F401  (each registers its commands on import)
from .group import main

__all__ = ["main"]
