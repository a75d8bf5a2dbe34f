"""The network module's presentation tier: the Protocols through which the rest of the
node sends Kademlia messages (the messages themselves are ``dhtstore.types``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..types import Message, PeerInfo


@runtime_checkable
class KadMessenger(Protocol):
    """Sends Kademlia messages to one peer at a time. Implemented over libp2p streams
    (network) and over the simulation's virtual transport (sim)."""

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        """Send a request and return the reply. Raises NetworkError on any failure."""
        ...

    async def send(self, peer: PeerInfo, message: Message) -> None:
        """Send a message that gets no reply (ADD_PROVIDER). Raises NetworkError."""
        ...
