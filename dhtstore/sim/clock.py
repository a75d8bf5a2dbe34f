"""An asyncio event loop on virtual time: when no callback is ready, the clock jumps
to the next timer instead of sleeping. A 10-second request timeout costs nothing, and
a run depends only on the order of events, never on the machine's speed.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class SimulationStalled(RuntimeError):
    """Every task waits for something no timer will bring: a deadlock in the simulation."""


class _VirtualSelector(selectors.SelectSelector):
    """Never waits: a select with a timeout advances the virtual clock by it."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.now = start

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationStalled("every task is waiting and no timer is set")
        if timeout > 0:
            self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A loop whose ``time()`` is virtual; it must not do real I/O (there is none in the sim)."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual = _VirtualSelector(start)
        super().__init__(selector=self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any, start: float = 0.0) -> T:
    """Run ``fn(*args)`` with anyio on a fresh virtual-time loop whose clock starts at ``start``."""
    return anyio.run(
        fn, *args, backend="asyncio", backend_options={"loop_factory": functools.partial(VirtualTimeLoop, start)}
    )
