"""The network module's presentation tier: what the rest of the node uses of libp2p.

- ``KadMessenger``: sends Kademlia messages (``dhtstore.types.Message``) to one peer
  at a time; implemented over libp2p streams (``network.kadmessenger``) and over the
  simulation's virtual transport (``sim``).
- ``Host``: the libp2p host (``network.host.Host`` implements it): dials, streams,
  ping, the protocols we serve, and what identify tells us about peers.
- ``Stream``: one negotiated libp2p stream, as a host hands it out.
- The security protocols a host can speak, by name (``SECURITY_PROTOCOLS``), and the
  default order it proposes them in (``DEFAULT_SECURITY``); ``protocol_ids`` checks a
  list of names.
- For a Kademlia server on a host's streams: the kad framing (``FrameDecoder``,
  ``encode_frame``, ``KadCodecError``) and the per-peer ``PeerRateLimiter``.
- ``HostLimits`` (with its ``ResourceLimits`` of ``ScopeLimits``): a host's limits, as
  config.toml's ``[limits]`` table gives them.

Everything else of the module (Noise, TLS, yamux, multistream, the TCP and QUIC transports) is
internal to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, TypeAlias, runtime_checkable

from multiaddr import Multiaddr

from ..peerid import PeerId
from ..types import Message, PeerInfo
from .connection import CONNECTION_ERRORS
from .identify import IdentifyInfo
from .kadcodec import FrameDecoder, KadCodecError, encode_frame
from .limits import DIAL_TIMEOUT, HostLimits, PeerRateLimiter
from .resources import ResourceLimits, ScopeLimits, StreamScope
from .security import DEFAULT_SECURITY, SECURITY_PROTOCOLS, protocol_ids

__all__ = [
    "CONNECTION_ERRORS",
    "DEFAULT_SECURITY",
    "DIAL_TIMEOUT",
    "FrameDecoder",
    "Host",
    "HostLimits",
    "IdentifyCallback",
    "IdentifyInfo",
    "KadCodecError",
    "KadMessenger",
    "PeerCallback",
    "PeerConnection",
    "PeerRateLimiter",
    "PeerTarget",
    "SECURITY_PROTOCOLS",
    "ResourceLimits",
    "ScopeLimits",
    "Stream",
    "StreamHandler",
    "encode_frame",
    "protocol_ids",
]

# A peer to dial: its id (addresses from the host's address book), an id with
# addresses, or a multiaddr ending in /p2p/<id>.
PeerTarget: TypeAlias = PeerInfo | PeerId | Multiaddr | str
IdentifyCallback: TypeAlias = Callable[[PeerId, IdentifyInfo], object]
PeerCallback: TypeAlias = Callable[[PeerId], object]


@runtime_checkable
class KadMessenger(Protocol):
    """Sends Kademlia messages to one peer at a time."""

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        """Send a request and return the reply. Raises NetworkError on any failure."""
        ...

    async def send(self, peer: PeerInfo, message: Message) -> None:
        """Send a message that gets no reply (ADD_PROVIDER). Raises NetworkError."""
        ...


class Stream(Protocol):
    """A libp2p stream after protocol negotiation: an anyio byte stream whose
    ``receive`` raises EndOfStream after the remote's close and BrokenResourceError
    after a reset; every failure is one of ``CONNECTION_ERRORS``."""

    @property
    def protocol(self) -> str:
        """The protocol agreed for this stream."""
        ...

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def resources(self) -> StreamScope:
        """What the stream holds of the host's resource limits (frame memory reserves here)."""
        ...

    async def receive(self, max_bytes: int = ...) -> bytes: ...

    async def send(self, item: bytes) -> None: ...

    async def aclose(self) -> None:
        """Close our side (the remote reads to its end); the remote may still write."""
        ...

    async def reset(self) -> None:
        """Abort both directions."""
        ...


StreamHandler: TypeAlias = Callable[[Stream], Awaitable[None]]


class PeerConnection(Protocol):
    """A live connection to a peer, as ``Host.connect`` returns it."""

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def remote_addr(self) -> Multiaddr:
        """Where the peer really is: the address dialled, or the socket's remote end of
        an inbound connection (not what the peer claims)."""
        ...


class Host(Protocol):
    """A libp2p host: one secured, multiplexed connection per peer, streams on it
    negotiated by protocol id, and the ping and identify services."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def listen_addrs(self) -> Sequence[Multiaddr]:
        """The addresses we listen on, as bound (port 0 resolved)."""
        ...

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters of refusals, failures and connection events, by name."""
        ...

    def advertised_addrs(self) -> list[bytes]:
        """Our listen addresses as peers can dial them (unspecified hosts expanded), binary."""
        ...

    def peer_addrs(self, peer: PeerId) -> tuple[bytes, ...]:
        """The addresses we know for ``peer`` (identify, or the last dial), binary."""
        ...

    def add_addrs(self, peer: PeerId, addrs: Iterable[bytes]) -> None:
        """Remember addresses for ``peer`` (replacing what we had)."""
        ...

    def connected_peers(self) -> list[PeerId]: ...

    def connection(self, peer: PeerId) -> PeerConnection | None:
        """The open connection to ``peer``, or None."""
        ...

    async def connect(self, target: PeerTarget) -> PeerConnection:
        """The connection to the peer, dialling it if needed. Raises NetworkError."""
        ...

    async def new_stream(self, target: PeerTarget, protocols: Sequence[str]) -> Stream:
        """A new stream to the peer, speaking the first of ``protocols`` it accepts.
        Raises NetworkError."""
        ...

    async def ping(self, target: PeerTarget, timeout: float = ...) -> float:
        """Round-trip time in seconds of one libp2p ping. Raises NetworkError."""
        ...

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol`` (and advertise it through identify)."""
        ...

    def remove_handler(self, protocol: str) -> None: ...

    def on_identify(self, callback: IdentifyCallback) -> None:
        """``callback(peer_id, info)`` after each identify or identify push from a peer."""
        ...

    def on_disconnect(self, callback: PeerCallback) -> None:
        """``callback(peer_id)`` when the connection to a peer closes (not when a newer
        connection to the same peer replaces it)."""
        ...

    def protect_when(self, predicate: Callable[[PeerId], bool]) -> None:
        """Never trim the connection to a peer for which ``predicate(peer)`` is true."""
        ...

    def resource_usage(self) -> Mapping[str, int]:
        """What the resource manager's system scope holds now, by resource."""
        ...

    def busy(self, peer: PeerId) -> AbstractContextManager[None]:
        """Work in flight with ``peer`` while entered: its connection is not trimmed."""
        ...
