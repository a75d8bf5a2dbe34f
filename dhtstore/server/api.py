"""The server module: answers incoming Kademlia requests.

A handler is sans-I/O in spirit: a decoded request in, a reply (or None) out. The
network layer reads and writes the frames; the simulation calls the same handler.
A class that serves through ``KadServer`` subclasses ``RequestHandler`` (for the
default ``add_providers``) or implements both methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..types import Message, PeerInfo


class InvalidRequest(ValueError):
    """A request to refuse: the stream is reset with no answer, and the event is counted."""


@runtime_checkable
class RequestHandler(Protocol):
    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        """Answer ``request`` from ``sender``; None means no reply (ADD_PROVIDER).

        Raises InvalidRequest for a malformed or invalid request.
        """
        ...

    async def add_providers(self, sender: PeerInfo, requests: Sequence[Message]) -> None:
        """Handle a run of ADD_PROVIDERs that arrived together on one stream; returns
        once the valid ones before the first invalid one are stored, then raises
        InvalidRequest for that one. This default handles them one by one; a handler
        over a store that commits in groups stores them together."""
        for request in requests:
            await self.handle(sender, request)
