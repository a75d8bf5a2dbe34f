"""The server module: answers incoming Kademlia requests.

A handler is sans-I/O in spirit: a decoded request in, a reply (or None) out. The
network layer reads and writes the frames; the simulation calls the same handler.
"""

from __future__ import annotations

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
