"""The network module's presentation tier: Kademlia messages as plain data, and the
Protocols through which the rest of the node sends them.

Messages here are frozen dataclasses, not protobuf objects: the routing code and the
simulation build and read them without touching the wire format; ``network.kadcodec``
turns them into the bytes of ``proto/dht.proto`` and back, checking every field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..peerid import PeerId


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer and its addresses, as binary multiaddrs (the wire form)."""

    peer_id: PeerId
    addrs: tuple[bytes, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class Record:
    """A value record (dht.proto ``Record``); ``time_received`` is RFC 3339, set by the receiver."""

    key: bytes
    value: bytes
    time_received: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    key: bytes = b""
    record: Record | None = None
    closer_peers: tuple[PeerInfo, ...] = ()
    provider_peers: tuple[PeerInfo, ...] = ()
    # Entries of the incoming message that did not parse (bad peer id, ...): skipped
    # by the codec and counted here so the receiver can account for them.
    skipped_peers: int = field(default=0, compare=False)


class NeedData:
    """The type of NEED_DATA; a singleton whose repr reads well in test failures."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


# Returned by every sans-I/O machine's ``next_event()`` (multistream, Noise, yamux)
# when it cannot make progress until ``receive_data`` gives it more bytes.
NEED_DATA = NeedData()


class NetworkError(Exception):
    """A request could not be completed: dial failure, reset stream, timeout, bad reply."""


class ProtocolViolation(NetworkError):
    """The remote sent something the protocol forbids."""


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
