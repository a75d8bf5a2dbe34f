"""One secured, multiplexed libp2p connection over TCP, and its streams.

The I/O around the sans-I/O machines: ``upgrade`` runs multistream-select, the agreed
security handshake (Noise or TLS, ``security.py``) and multistream-select again on a
fresh socket; ``Connection.run`` then reads the socket,
decrypts, feeds yamux and dispatches its events to ``Stream`` objects, which are anyio
byte streams (``receive`` raises EndOfStream after the remote's FIN and
BrokenResourceError after a reset or a lost connection).

Flow control: a stream's receive window is given back to the remote (``consume``)
only as the application reads, and ``send`` waits for window when the remote's is
exhausted, so neither side buffers more than one window per stream.

Liveness (as go-yamux): after ``keepalive_interval`` seconds with nothing received, a
yamux ping goes out, and a pong must come back within ``write_timeout``; a write
buffer that stays over its limit for ``write_timeout`` (a peer that stopped reading)
closes the connection too. Bytes are queued on the socket as soon as yamux produces
them, in that order, and only a sender of stream data waits for the socket to drain:
the read loop never waits on a peer that does not read (unless a MiB of its own
replies piles up unread).

Resources: each stream has a ``StreamScope`` in the connection's scope (the host's
resource manager); an inbound stream the scope refuses is reset at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc
from multiaddr import Multiaddr

from ..crypto.keys import PrivateKey, PublicKey
from ..errors import NetworkError, ProtocolViolation
from ..peerid import PeerId
from . import yamux
from .multistream import (
    MultistreamDialer,
    MultistreamListener,
    NegotiationFailed,
    ProtocolAgreed,
)
from .muxed import InboundStreamTask, MuxedStream, Signal
from .resources import ConnectionScope, ResourceLimitExceeded, StreamScope
from .sansio import NEED_DATA
from .security import DEFAULT_SECURITY, SecureTransport, protocol_ids, security_name, start_handshake
from .tcp import TcpStream

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024  # default for a stream's receive
SOCKET_READ_SIZE = 1024 * 1024  # whatever the transport has (asyncio hands over ≤256 KiB)

# Errors that end a connection or stream without being a bug of ours.
CONNECTION_ERRORS = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ProtocolViolation,
    ResourceLimitExceeded,
)
KEEPALIVE_INTERVAL = 30.0  # go-yamux KeepAliveInterval
WRITE_TIMEOUT = 10.0  # go-yamux ConnectionWriteTimeout: a pong, or a stalled write
# Unsent bytes past which the read loop waits for the peer to read: acks and pongs for
# a peer that sends but never reads would otherwise pile up until the write timeout.
MAX_UNSENT = 1024 * 1024


class NegotiationError(ProtocolViolation):
    """The remote supports none of the protocols proposed, or closed mid-negotiation."""


Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[bytes]]


async def negotiate(machine: MultistreamDialer | MultistreamListener, send: Send, receive: Receive) -> ProtocolAgreed:
    """Drive a multistream-select machine to agreement over ``send``/``receive``."""
    while True:
        event = machine.next_event()
        out = machine.data_to_send()
        if out:
            await send(out)
        if isinstance(event, ProtocolAgreed):
            return event
        if isinstance(event, NegotiationFailed):
            raise NegotiationError(event.reason)
        try:
            data = await receive()
        except anyio.EndOfStream:
            raise NegotiationError("remote closed during protocol negotiation") from None
        machine.receive_data(data)


@dataclass(slots=True)
class Upgraded:
    """What ``upgrade`` hands to ``Connection``."""

    transport: SecureTransport
    remote_peer: PeerId
    remote_public_key: PublicKey
    plaintext: bytes  # decrypted bytes already received past the muxer negotiation
    early_muxer: bool  # yamux was agreed in the security handshake, not by multistream
    security: str  # the security protocol's id, /noise or /tls/1.0.0


async def upgrade(
    sock: anyio.abc.ByteStream,
    identity: PrivateKey,
    initiator: bool,
    expected_peer: PeerId | None,
    security: Sequence[str] = protocol_ids(DEFAULT_SECURITY),
) -> Upgraded:
    """multistream(/noise or /tls/1.0.0) → that handshake → multistream(/yamux/1.0.0) on
    a raw socket. ``security`` is what we propose, in order, when we dial; inbound we
    accept any of them. When both sides offer yamux in the handshake (Noise extensions,
    TLS ALPN; go-libp2p, js-libp2p and us: connections/inlined-muxer-negotiation.md),
    the last multistream round is skipped, one round trip less per connection.

    Raises ProtocolViolation subclasses for bad input and the anyio/OS errors of the
    socket; the caller applies the handshake timeout.
    """

    async def raw_receive() -> bytes:
        return await sock.receive(READ_SIZE)

    chooser = MultistreamDialer(security) if initiator else MultistreamListener(security)
    agreed = await negotiate(chooser, sock.send, raw_receive)
    security_id, name = agreed.protocol, security_name(agreed.protocol)

    handshake = start_handshake(agreed.protocol, identity, initiator, expected_peer, [yamux.PROTOCOL_ID])
    if agreed.leftover:
        handshake.receive_data(agreed.leftover)
    while True:
        event = handshake.next_event()
        out = handshake.data_to_send()
        if out:
            await sock.send(out)
        if event is not NEED_DATA:
            break
        try:
            handshake.receive_data(await raw_receive())
        except anyio.EndOfStream:
            raise NegotiationError(f"remote closed during the {name} handshake") from None
    transport = handshake.transport()
    log.debug("secured with %s to %s (%s)", name, handshake.remote_peer, "outbound" if initiator else "inbound")
    if handshake.selected_muxer == yamux.PROTOCOL_ID:
        return Upgraded(
            transport, handshake.remote_peer, handshake.remote_public_key, transport.decrypt_available(), True, security_id
        )

    async def secure_send(data: bytes) -> None:
        await sock.send(transport.encrypt(data))

    async def secure_receive() -> bytes:
        while True:
            plaintext = transport.decrypt_available()
            if plaintext:
                return plaintext
            transport.receive_data(await raw_receive())

    muxer = MultistreamDialer([yamux.PROTOCOL_ID]) if initiator else MultistreamListener([yamux.PROTOCOL_ID])
    agreed = await negotiate(muxer, secure_send, secure_receive)
    return Upgraded(transport, handshake.remote_peer, handshake.remote_public_key, agreed.leftover, False, security_id)


class Stream(MuxedStream):
    """One yamux stream, after (or during) protocol negotiation."""

    connection: Connection

    def __init__(self, connection: Connection, stream_id: int, initiator: bool, resources: StreamScope):
        super().__init__(connection, stream_id, initiator, resources)
        self._writable = Signal()
        self._credited_ahead = 0  # bytes put back by unread(): already credited to yamux

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        chunk = await self._take(max_bytes)
        already = min(len(chunk), self._credited_ahead)
        self._credited_ahead -= already
        if len(chunk) > already:
            await self.connection._consume(self.stream_id, len(chunk) - already)
        return chunk

    def unread(self, data: bytes) -> None:
        """Put back bytes read past the end of protocol negotiation."""
        self._buffer[:0] = data
        self._credited_ahead += len(data)

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while True:
            if self._reset or self.connection.closed:
                raise anyio.BrokenResourceError
            if self._local_closed:
                raise anyio.ClosedResourceError
            writable = self._writable.next_fire()  # a window update may land during the flush
            muxer = self.connection._muxer
            # Copy only what fits; with no window, offer one byte so yamux marks the
            # stream blocked and reports StreamWritable when the window reopens.
            fits = min(len(view), muxer.send_window(self.stream_id))
            accepted = muxer.send_data(self.stream_id, bytes(view[: fits or 1]))
            view = view[accepted:]
            await self.connection._flush()
            if not view:
                return
            if accepted == 0:
                await writable.wait()

    async def send_eof(self) -> None:
        if self._local_closed or self._reset or self.connection.closed:
            return
        self._local_closed = True
        self.connection._muxer.close_stream(self.stream_id)
        await self.connection._flush()
        self.connection._forget_if_done(self)

    async def aclose(self) -> None:
        """Half-close (FIN); the stream is gone once the remote's FIN arrives too."""
        try:
            await self.send_eof()
        except CONNECTION_ERRORS:
            pass

    async def reset(self) -> None:
        """Abort both directions (RST)."""
        if self._reset or self.connection.closed:
            return
        self._mark_reset()
        self.connection._muxer.reset_stream(self.stream_id)
        try:
            await self.connection._flush()
        except CONNECTION_ERRORS:
            pass

    def _mark_reset(self) -> None:
        self._reset = True
        self._readable.fire()
        self._writable.fire()
        self.connection._forget(self)

    def discard_input(self) -> None:
        """Drop what is buffered and all that arrives from now on, crediting it back,
        so a stream nobody reads any more holds no memory and never stalls the peer."""
        self._discarding = True
        dropped = len(self._buffer) - self._credited_ahead
        self._buffer.clear()
        self._credited_ahead = 0
        if dropped > 0 and not self.connection.closed:
            self.connection._muxer.consume(self.stream_id, dropped)

    def _on_data(self, data: bytes) -> None:
        if self._discarding:
            self.connection._muxer.consume(self.stream_id, len(data))
            return
        self._buffer += data
        self._readable.fire()

    def _on_end(self) -> None:
        self._remote_closed = True
        self._readable.fire()
        self.connection._forget_if_done(self)




class Connection:
    """A connection to one peer; ``run`` must be running for it to make progress."""

    def __init__(
        self,
        sock: TcpStream,
        upgraded: Upgraded,
        *,
        initiator: bool,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        max_streams: int,
        on_inbound_stream: InboundStreamTask,
        resources: ConnectionScope,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        write_timeout: float = WRITE_TIMEOUT,
    ):
        self._sock = sock
        self.resources = resources
        self._keepalive_interval = keepalive_interval
        self._write_timeout = write_timeout
        self._transport = upgraded.transport
        self._muxer = yamux.YamuxConnection(is_client=initiator, max_streams=max_streams)
        self.remote_peer = upgraded.remote_peer
        self.remote_public_key = upgraded.remote_public_key
        self.early_muxer = upgraded.early_muxer
        self.security = upgraded.security
        self.initiator = initiator
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.opened_at = time.monotonic()
        self.last_active = self.opened_at  # last byte received, or stream opened by us
        self.last_received = self.opened_at
        self._ping_sent_at: float | None = None  # the keep-alive ping awaiting its pong
        self.closed = False
        self._on_inbound_stream = on_inbound_stream
        self._streams: dict[int, Stream] = {}
        self._closed_event = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._pending_plaintext = upgraded.plaintext
        self.protocol_errors = 0
        self.liveness_failure = ""  # "keepalive_timeouts" or "write_stalls" once it closed for that

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def __repr__(self) -> str:
        direction = "out" if self.initiator else "in"
        return f"<Connection {direction} {self.remote_peer} {self.remote_addr}>"

    async def run(self) -> None:
        """Read and dispatch until the connection ends; inbound stream handlers run
        in a task group of their own, cancelled when the connection ends."""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._watch_liveness)
                try:
                    await self._process(self._pending_plaintext + self._transport.decrypt_available())
                    while not self.closed:
                        data = await self._sock.receive(SOCKET_READ_SIZE)
                        self._transport.receive_data(data)
                        await self._process(self._transport.decrypt_available())
                except ProtocolViolation as exc:
                    self.protocol_errors += 1
                    log.debug("%r: protocol error: %s", self, exc)
                    await self._go_away(yamux.GoAwayCode.PROTOCOL_ERROR)
                except CONNECTION_ERRORS as exc:
                    log.debug("%r: closed: %s", self, type(exc).__name__)
                finally:
                    await self._shutdown()
                    tg.cancel_scope.cancel()
        finally:
            self._closed_event.set()

    async def _watch_liveness(self) -> None:
        tick = min(self._keepalive_interval, self._write_timeout) / 2
        while not self.closed:
            await anyio.sleep(tick)
            now = time.monotonic()
            if self._sock.write_stalled_for(now) > self._write_timeout:
                self.liveness_failure = "write_stalls"
            elif self._ping_sent_at is not None:
                if now - self._ping_sent_at > self._write_timeout:
                    self.liveness_failure = "keepalive_timeouts"
            elif now - self.last_received >= self._keepalive_interval:
                self._muxer.ping()
                self._ping_sent_at = now
                try:
                    self._write_pending()
                except CONNECTION_ERRORS:
                    return  # the read loop sees the socket's end too
            if self.liveness_failure:
                log.debug("%r: closing: %s", self, self.liveness_failure)
                await self._shutdown()
                return

    async def open_stream(self) -> Stream:
        """A new outbound stream; NetworkError when yamux's stream limits are reached."""
        if self.closed:
            raise anyio.BrokenResourceError
        try:
            resources = self.resources.open_stream(inbound=False)
        except ResourceLimitExceeded as exc:
            raise NetworkError(f"cannot open a stream to {self.remote_peer}: {exc}") from None
        try:
            stream_id = self._muxer.open_stream()
        except yamux.StreamLimitError as exc:
            resources.close()
            raise NetworkError(f"cannot open a stream to {self.remote_peer}: {exc}") from None
        stream = Stream(self, stream_id, initiator=True, resources=resources)
        self._streams[stream_id] = stream
        self.last_active = time.monotonic()
        await self._flush()
        return stream

    async def close(self) -> None:
        """Go away politely, close the socket and wait for ``run`` to finish."""
        if not self.closed:
            await self._go_away(yamux.GoAwayCode.NORMAL)
            await self._shutdown()
        if self._task_group is not None:
            await self._closed_event.wait()

    async def _process(self, plaintext: bytes) -> None:
        if not plaintext:
            return
        self.last_active = self.last_received = time.monotonic()
        self._muxer.receive_data(plaintext)
        while (event := self._muxer.next_event()) is not NEED_DATA:
            self._dispatch(event)
        self._write_pending()  # acks, window updates, pongs: no waiting for the peer to read ...
        if self._sock.write_buffer_size() > MAX_UNSENT:  # ... unless it has not read a MiB of them
            await self._sock.drain()

    def _dispatch(self, event: object) -> None:
        if isinstance(event, yamux.StreamData):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data)
            else:  # stream we gave up on (reset or forgotten): keep the window open
                self._muxer.consume(event.stream_id, len(event.data))
        elif isinstance(event, yamux.StreamOpened):
            self._accept_stream(event.stream_id)
        elif isinstance(event, yamux.StreamEnded):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream._on_end()
        elif isinstance(event, yamux.StreamReset):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream._mark_reset()
        elif isinstance(event, yamux.StreamWritable):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream._writable.fire()
        elif isinstance(event, yamux.PongReceived):
            self._ping_sent_at = None
        elif isinstance(event, yamux.GoAwayReceived):
            log.debug("%r: remote went away (code %s)", self, event.code)
            self.closed = True  # no new streams; run() ends and closes the socket

    def _accept_stream(self, stream_id: int) -> None:
        # yamux itself resets inbound streams past its max_streams
        assert self._task_group is not None
        try:
            resources = self.resources.open_stream(inbound=True)
        except ResourceLimitExceeded:
            self._muxer.reset_stream(stream_id)
            return
        stream = Stream(self, stream_id, initiator=False, resources=resources)
        self._streams[stream_id] = stream
        self._task_group.start_soon(self._on_inbound_stream, stream)

    def _write_pending(self) -> None:
        # Taken from yamux, encrypted and queued with no await in between, so frames
        # leave in the order yamux produced them.
        out = self._muxer.data_to_send()
        if out and not self.closed:
            self._sock.write(self._transport.encrypt(out))

    async def _flush(self) -> None:
        """Queue what yamux has to send, then wait while the socket's buffer is full
        (the liveness watch closes the connection if it stays full)."""
        self._write_pending()
        if not self.closed:
            await self._sock.drain()

    async def _consume(self, stream_id: int, n: int) -> None:
        if self.closed:
            return
        self._muxer.consume(stream_id, n)
        await self._flush()

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        stream.resources.close()

    def _forget_if_done(self, stream: Stream) -> None:
        if stream._local_closed and stream._remote_closed:
            self._forget(stream)

    async def _go_away(self, code: int) -> None:
        if self.closed:
            return
        try:
            self._muxer.go_away(code)
            with anyio.move_on_after(1):
                await self._flush()
        except CONNECTION_ERRORS:
            pass

    async def _shutdown(self) -> None:
        self.closed = True
        for stream in list(self._streams.values()):
            stream._mark_reset()
        self.resources.close()
        with anyio.CancelScope(shield=True):
            try:
                await self._sock.aclose()
            except CONNECTION_ERRORS:
                pass
