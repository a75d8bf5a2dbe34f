"""The provide list of a store without a node: what ``dhtstore provide`` edits beside a
running node (which polls the store for changes). Apart from ``node`` so the CLI's
provide commands load the data tier and this module, not the node's network stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..data.schema import open_store
from .api import Provider
from .claims import SqlClaimStore
from .providelist import ProvideListStore
from .service import ProvideListService


@asynccontextmanager
async def open_provide_list(store_url: str) -> AsyncIterator[Provider]:
    """The provide list of the store at ``store_url``. Its commits are durable once they
    return: the CLI reports what it added or removed."""
    engine = await open_store(store_url, durable_commits=True)
    try:
        yield await ProvideListService.for_store(ProvideListStore(engine), SqlClaimStore(engine))
    finally:
        await engine.dispose()
