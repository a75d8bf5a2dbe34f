"""What the host needs of a secured, multiplexed connection and its streams, whatever
the transport: TCP with Noise or TLS and yamux (``connection.Connection``) or QUIC
(``quic.Connection``); the stream classes of both derive from ``MuxedStream`` and wake their readers with ``Signal``. Internal to the network module; ``api.PeerConnection`` and
``api.Stream`` are the part callers see."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Coroutine
from typing import Protocol

import anyio
import anyio.abc
from multiaddr import Multiaddr

from ..crypto.keys import PublicKey
from ..peerid import PeerId
from .resources import ConnectionScope, StreamScope


class Signal:
    """Wakes every current waiter; later waiters wait for the next ``fire``. A fire
    with nobody waiting costs nothing (QUIC fires one per datagram)."""

    __slots__ = ("_event", "_taken")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._taken = False  # someone may wait for _event

    def fire(self) -> None:
        if self._taken:
            self._event.set()
            self._event = anyio.Event()
            self._taken = False

    def next_fire(self) -> anyio.Event:
        """The event the next ``fire`` sets: take it before an await that could miss it."""
        self._taken = True
        return self._event

    async def wait(self) -> None:
        await self.next_fire().wait()


class MuxedStream(anyio.abc.ByteStream):
    """A stream as the host drives it (negotiation, then its handler or its caller): an
    anyio byte stream whose ``receive`` raises EndOfStream after the remote's FIN and
    BrokenResourceError after a reset or a lost connection.

    The muxers' streams share their state and reading here; each keeps its own
    accounting of what is read (yamux credits the window, QUIC counts unread bytes)."""

    protocol: str  # set once negotiated
    connection: MuxedConnection

    def __init__(self, connection: MuxedConnection, stream_id: int, initiator: bool, resources: StreamScope):
        self.connection = connection
        self.stream_id = stream_id
        self.initiator = initiator
        self.resources = resources
        self.protocol = ""
        self._buffer = bytearray()
        self._readable = Signal()
        self._remote_closed = False  # FIN received
        self._local_closed = False  # FIN sent
        self._reset = False
        self._discarding = False  # nobody reads any more: incoming data is dropped

    @property
    def remote_peer(self) -> PeerId:
        return self.connection.remote_peer

    async def _take(self, max_bytes: int) -> bytes:
        """Wait for data (or the end) and take up to ``max_bytes`` of the buffer."""
        while not self._buffer:
            if self._reset or self.connection.closed:
                raise anyio.BrokenResourceError
            if self._remote_closed:
                raise anyio.EndOfStream
            await self._readable.wait()
        chunk = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return chunk

    @abc.abstractmethod
    async def reset(self) -> None:
        """Abort both directions."""

    @abc.abstractmethod
    def unread(self, data: bytes) -> None:
        """Put back bytes read past the end of protocol negotiation."""

    @abc.abstractmethod
    def discard_input(self) -> None:
        """Drop what is buffered and whatever arrives from now on (nobody reads any more)."""


StreamHandler = Callable[[MuxedStream], Awaitable[None]]
InboundStreamTask = Callable[[MuxedStream], Coroutine[object, object, None]]  # started as a task per stream


class MuxedConnection(Protocol):
    """A connection to one authenticated peer, as the host keeps it."""

    remote_peer: PeerId
    remote_addr: Multiaddr
    local_addr: Multiaddr
    initiator: bool
    security: str  # /noise, /tls/1.0.0 or /quic-v1
    opened_at: float
    last_active: float
    closed: bool
    liveness_failure: str  # why it closed itself, as a stats key, or ""
    protocol_errors: int
    early_muxer: bool  # the muxer came with the handshake (always, for QUIC)

    @property
    def remote_public_key(self) -> PublicKey: ...

    @property
    def resources(self) -> ConnectionScope: ...

    @property
    def num_streams(self) -> int: ...

    async def open_stream(self) -> MuxedStream: ...

    async def run(self) -> None:
        """Drive the connection until it ends (the host runs it as a task)."""

    async def close(self) -> None: ...
