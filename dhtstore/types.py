"""The value types every module shares: Kademlia messages as plain data, peers, records.

They sit below every module (as go-libp2p's ``core/peer`` does), so the stores, the routing
table and the server depend on these types, not on the network module. Messages are frozen
dataclasses, not protobuf objects: the routing code and the simulation build and read them
without touching the wire format; ``network.kadcodec`` turns them into the bytes of
``proto/dht.proto`` and back, checking every field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .peerid import PeerId


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
