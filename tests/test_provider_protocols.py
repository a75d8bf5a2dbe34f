"""The provide list's and the claims' implementations against their Protocols
(``provider.api.ProvideList``, ``provider.api.ClaimStore``): the assignments below are
checked by mypy, and the signatures at run time, so an implementation that drifts
from its Protocol fails."""

from __future__ import annotations

import inspect

import pytest

from dhtstore.data.engine import make_engine
from dhtstore.provider.api import ClaimStore, ProvideList
from dhtstore.provider.claims import SqlClaimStore
from dhtstore.provider.memory import MemoryClaimStore, MemoryProvideList
from dhtstore.provider.providelist import ProvideListStore


def implementations() -> tuple[list[ProvideList], list[ClaimStore]]:
    engine = make_engine("sqlite+aiosqlite:///:memory:")  # never connected
    memory_claims = MemoryClaimStore()
    lists: list[ProvideList] = [ProvideListStore(engine), MemoryProvideList(memory_claims)]
    claims: list[ClaimStore] = [SqlClaimStore(engine), memory_claims]
    return lists, claims


def members(protocol: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in vars(protocol).items()
        if callable(fn) and not name.startswith("_")
    }


@pytest.mark.parametrize("protocol", [ProvideList, ClaimStore])
def test_every_implementation_has_the_protocols_methods(protocol: type) -> None:
    lists, claims = implementations()
    expected = members(protocol)
    assert expected, "the Protocol declares methods"
    for impl in lists if protocol is ProvideList else claims:
        for name, signature in expected.items():
            method = getattr(impl, name, None)
            assert method is not None, f"{type(impl).__name__} lacks {name}"
            got = inspect.signature(method)
            assert list(got.parameters) == [p for p in signature.parameters if p != "self"], f"{type(impl).__name__}.{name}"
            if "AsyncIterator" in str(signature.return_annotation):  # a stream: an async generator
                assert inspect.isasyncgenfunction(method), f"{type(impl).__name__}.{name} is not an async generator"
            else:
                assert inspect.iscoroutinefunction(method), f"{type(impl).__name__}.{name} is not async"
