"""libp2p over QUIC v1 (``/quic-v1``; RFC 9000, libp2p specs quic/README.md): one UDP
socket per listen address carrying many connections, each a secured, multiplexed
libp2p connection whose QUIC streams are libp2p streams (no yamux; multistream-select
per stream, by the host, as over TCP).

QUIC and its TLS 1.3 are aioquic's (sans-I/O ``QuicConnection``, driven here). Why
aioquic over qh3: both are maintained and sans-I/O alike, but qh3's TLS server never
sends a CertificateRequest (a monkey-patch package exists for that), while aioquic's
server has the whole client-certificate path and only gates it behind an attribute,
``tls.Context._request_client_certificate``, set once the TLS context exists
(``_ServerQuic``, as py-libp2p does; tests/test_host_quic.py fails if a client without a
certificate gets in). aioquic checks the CertificateVerify signatures (the peer holds
the certificate's key); the libp2p checks run on the certificate once the handshake
completes (``tlscert.verify_certificate``): exactly one certificate, carrying a valid
libp2p extension, and on a dial the dialled peer id. ALPN is ``libp2p``. aioquic speaks
TLS 1.3 only. The certificate (a throwaway P-256 key, signed by the host key) is made
once per transport, as go-libp2p's libp2ptls.Identity does.

Dispatch (``Endpoint``): a datagram goes to the connection owning its destination
connection id (each connection's ids are registered as aioquic issues and retires
them). An unknown id starts a connection only for a full-size (≥ 1200 bytes, RFC 9000
14.1) QUIC v1 Initial on a listening endpoint, and only if ``admit`` (the host's
resource manager: inbound connections and handshakes per IP and in all) lets it; any
other unknown or malformed datagram is dropped and counted. Dials go out from the
listen socket of the right family when there is one (as go-libp2p reuses its port),
so peers see the address we listen on.

Driving: no task per connection. Input is handled as the endpoint reads it; output is
built once per event-loop pass (``_transmit_soon``), so a reply and the ack of its
request leave in one datagram; aioquic's timer (acks, pacing, loss detection, the idle
timeout) and the keep-alive are one event-loop timer per connection. Acks wait up to
``ACK_DELAY`` for a packet that carries them anyway, or go once ``ACK_EVERY`` datagrams
wait for them (``Connection._transmit``); that, and the ack of a packet sent with any
stream data, write aioquic's private ``ack_at`` and ``_ack_delay``
(tests/test_host_quic.py fails if they change).

Flow control: a ``send`` waits while more than ``SEND_BUFFER`` bytes of the stream are
unacknowledged. aioquic credits received data back to the peer as it delivers it, so
unread data is bounded here instead: a stream holding more than ``MAX_STREAM_BUFFER``
unread bytes is reset, and a connection whose streams hold more than
``MAX_CONNECTION_BUFFER`` is closed (each counted as a protocol error of the connection).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

import anyio
import anyio.abc
from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from its C module
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection as AioQuicConnection
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header
from aioquic.quic.recovery import QuicPacketSpace
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from multiaddr import Multiaddr

from ..crypto.keys import PrivateKey, PublicKey
from ..errors import NetworkError, ProtocolViolation
from ..peerid import PeerId
from . import multiaddrs
from .muxed import InboundStreamTask, MuxedStream, Signal
from .resources import ConnectionScope, ResourceLimitExceeded, StreamScope
from .tlscert import CertificateError, make_certificate, verify_certificate

__all__ = ["PROTOCOL_ID", "Connection", "Endpoint", "QuicError", "QuicTransport", "Stream"]

log = logging.getLogger(__name__)

PROTOCOL_ID = "/quic-v1"  # what the host reports as the connection's security
ALPN = "libp2p"
CONNECTION_ID_LENGTH = 8
MIN_INITIAL_SIZE = 1200  # RFC 9000 14.1: a server discards smaller Initial datagrams
IDLE_TIMEOUT = 30.0  # go-libp2p's MaxIdleTimeout
KEEPALIVE = 15.0  # go-libp2p's KeepAlivePeriod: a PING after this long with nothing received
READ_SIZE = 64 * 1024
SEND_BUFFER = 1024 * 1024  # unacknowledged bytes per stream before send waits
MAX_STREAM_BUFFER = 4 * 1024 * 1024  # unread bytes per stream before it is reset
MAX_CONNECTION_BUFFER = 16 * 1024 * 1024  # ... and on all of a connection's, before it is closed
QUIC_FLOW_CONTROL_ERROR = 0x3
SOCKET_BUFFER = 4 * 1024 * 1024  # UDP receive and send buffers asked of the kernel (it may cap them)
READ_BATCH = 64  # datagrams read per readiness callback besides asyncio's one
MAX_UDP_PAYLOAD = 65_527  # what asyncio asks recvfrom for, too
MAX_WAIT = 5.0  # latest a connection's timer is set for when aioquic has no timer
# Acks (RFC 9000 13.2): aioquic acks a 1-RTT packet 1 ms after it arrives, while it
# advertises a max_ack_delay of 25 ms; here an ack waits up to ACK_DELAY for a packet that
# carries it anyway (the reply, the next request), and goes at the end of the event-loop
# pass once ACK_EVERY datagrams wait for it (13.2.2: after at least two ack-eliciting
# packets), so a bulk sender is acked as before.
ACK_DELAY = 0.020  # under the advertised 25 ms: the timer may fire late
ACK_EVERY = 2
ERROR_CERTIFICATE = 0x100 + 42  # CRYPTO_ERROR(bad_certificate): a refused libp2p certificate
ERROR_STREAM_RESET = 0  # libp2p gives no meaning to stream error codes


class QuicError(ProtocolViolation):
    """The QUIC handshake failed or the peer's certificate was refused."""


class _ServerQuic(AioQuicConnection):
    """aioquic's server asks for a client certificate only under this (private) flag,
    which must be set before the ServerHello is built in the same receive_datagram."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls._request_client_certificate = True


class Stream(MuxedStream):
    """One bidirectional QUIC stream, after (or during) protocol negotiation."""

    connection: Connection

    def __init__(self, connection: Connection, stream_id: int, initiator: bool, resources: StreamScope):
        super().__init__(connection, stream_id, initiator, resources)
        self._write_stopped = False  # the peer sent STOP_SENDING

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        chunk = await self._take(max_bytes)
        self.connection._unread -= len(chunk)
        return chunk

    def unread(self, data: bytes) -> None:
        self._buffer[:0] = data
        self.connection._unread += len(data)

    def _drop_buffer(self) -> None:
        self.connection._unread -= len(self._buffer)
        self._buffer.clear()

    async def send(self, item: bytes) -> None:
        """Hand ``item`` to aioquic, at most ``SEND_BUFFER`` unacknowledged at a time."""
        conn = self.connection
        view = memoryview(item)
        while True:
            if self._reset or self._write_stopped or conn.closed:
                raise anyio.BrokenResourceError
            if self._local_closed:
                raise anyio.ClosedResourceError
            room = SEND_BUFFER - conn._unacked(self.stream_id)
            if room > 0:
                try:
                    conn._quic.send_stream_data(self.stream_id, bytes(view[:room]))
                except ValueError:  # aioquic: the stream is finished or reset
                    raise anyio.BrokenResourceError from None
                conn._transmit_soon(data=True)
                view = view[room:]
                if not view:
                    return
            await conn._progress.next_fire().wait()

    async def send_eof(self) -> None:
        if self._local_closed or self._reset or self.connection.closed:
            return
        self._local_closed = True
        if not self._write_stopped:
            try:
                self.connection._quic.send_stream_data(self.stream_id, b"", end_stream=True)
            except ValueError:  # aioquic: the stream is finished or reset already
                pass
            self.connection._transmit_soon(data=True)
        self.connection._forget_if_done(self)

    async def aclose(self) -> None:
        await self.send_eof()

    async def reset(self) -> None:
        if self._reset or self.connection.closed:
            return
        quic = self.connection._quic
        try:
            if not self._local_closed and not self._write_stopped:
                quic.reset_stream(self.stream_id, ERROR_STREAM_RESET)
            if not self._remote_closed:
                quic.stop_stream(self.stream_id, ERROR_STREAM_RESET)
        except ValueError:  # aioquic already discarded the stream
            pass
        self._mark_reset()
        self.connection._transmit_soon(data=True)

    def discard_input(self) -> None:
        self._discarding = True
        self._drop_buffer()

    def _mark_reset(self) -> None:
        self._reset = True
        self._drop_buffer()
        self._readable.fire()
        self.connection._forget(self)

    def _on_data(self, data: bytes, end: bool) -> None:
        conn = self.connection
        if not self._discarding:
            self._buffer += data
            conn._unread += len(data)
        if end:
            self._remote_closed = True
        self._readable.fire()
        if len(self._buffer) > MAX_STREAM_BUFFER:
            conn.protocol_errors += 1
            log.debug("%r: stream %d holds over %d unread bytes: reset", conn, self.stream_id, MAX_STREAM_BUFFER)
            conn._spawn_reset(self)
        elif conn._unread > MAX_CONNECTION_BUFFER:
            conn.protocol_errors += 1
            conn._fail(QUIC_FLOW_CONTROL_ERROR, f"over {MAX_CONNECTION_BUFFER} unread bytes on the connection's streams")
        elif end:
            conn._forget_if_done(self)




class Connection:
    """A QUIC connection to one peer. The endpoint's reads, ``_transmit_soon`` (once per
    event-loop pass) and one event-loop timer (``_arm_timer``) drive it; ``handshake``
    waits until the peer is authenticated, ``run`` runs its inbound streams' handlers
    until it ends."""

    def __init__(
        self,
        endpoint: Endpoint,
        quic: AioQuicConnection,
        *,
        initiator: bool,
        remote: tuple[Any, ...],
        expected_peer: PeerId | None,
        resources: ConnectionScope,
        max_streams: int,
        on_inbound_stream: InboundStreamTask,
        keepalive_interval: float = KEEPALIVE,
    ):
        self._endpoint = endpoint
        self._quic = quic
        self._remote = remote
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.resources = resources
        self._max_streams = max_streams
        self._keepalive_interval = keepalive_interval
        self.security = PROTOCOL_ID
        self.early_muxer = True  # QUIC multiplexes by itself: no muxer negotiation
        self.remote_addr = quic_multiaddr(remote[0], remote[1])
        self.local_addr = endpoint.local_addr
        self.remote_peer: PeerId = expected_peer or PeerId(b"")  # set by the handshake
        self._remote_public_key: PublicKey | None = None
        self.opened_at = time.monotonic()
        self.last_active = self.last_received = self.opened_at
        self.closed = False
        self.established = False
        self.handshake_error = ""
        self.protocol_errors = 0
        self.liveness_failure = ""
        self._changed = Signal()  # fired when established and when closed
        self._timer: asyncio.TimerHandle | None = None  # the loop's call of _on_timer
        self._timer_at = 0.0  # ... and when it is due
        self._transmit_scheduled = False
        self._ack_with_data = False  # a stream was written since the last transmit
        self._unacked_datagrams = 0  # received while an ack is owed (the ack not sent yet)
        self._space: QuicPacketSpace | None = None  # see _app_space
        quic._ack_delay = ACK_DELAY  # private: aioquic has no setting for it
        self._progress = Signal()  # fired after each datagram: acks may have freed send buffer
        self._streams: dict[int, Stream] = {}
        self._unread = 0  # bytes received on all streams that nobody has read yet
        self._next_remote_stream = 0 if not initiator else 1  # the peer's next bidi stream id
        self._on_inbound_stream = on_inbound_stream
        self._task_group: anyio.abc.TaskGroup | None = None
        self._waiting_streams: list[Stream] = []  # inbound before run() started
        self._closed_event = anyio.Event()
        self._ping_outstanding = False

    def __repr__(self) -> str:
        direction = "out" if self.initiator else "in"
        return f"<QuicConnection {direction} {self.remote_peer if self.established else '?'} {self.remote_addr}>"

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    @property
    def remote_public_key(self) -> PublicKey:
        if self._remote_public_key is None:
            raise QuicError("the QUIC handshake has not authenticated the peer yet")
        return self._remote_public_key

    # -- driving -------------------------------------------------------------------

    async def handshake(self) -> None:
        """Until the peer is authenticated; QuicError if the handshake fails (the caller
        applies the timeout and, on any failure, ``abort``)."""
        while not (self.established or self.closed):
            await self._changed.next_fire().wait()
        if not self.established:
            raise QuicError(self.handshake_error or "connection closed during the handshake")

    async def run(self) -> None:
        """Until the connection ends; inbound stream handlers run in a task group of
        their own, cancelled when the connection ends. (Input, output and timers need no
        task: the endpoint's reads, ``_transmit_soon`` and ``_timer`` drive them.)"""
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                for stream in self._waiting_streams:
                    tg.start_soon(self._on_inbound_stream, stream)
                self._waiting_streams.clear()
                try:
                    while not self.closed:
                        await self._changed.next_fire().wait()
                finally:
                    self._shutdown()
                    tg.cancel_scope.cancel()
        finally:
            self._closed_event.set()

    def _arm_timer(self) -> None:
        """Have the event loop call ``_on_timer`` at aioquic's timer (an ack, pacing or
        loss-detection deadline, the idle timeout) or the keep-alive, whichever is first.
        A loop timer, not a sleeping task: aioquic's timer moves with nearly every
        datagram (an ack delay, the loss-detection deadline), and re-arming a loop timer
        costs far less than waking a task to sleep anew. Only a deadline earlier than the
        armed one re-arms; a timer that fires early finds nothing due and arms anew."""
        timer = self._quic.get_timer()
        deadline = time.monotonic() + MAX_WAIT if timer is None else timer
        if self.established and not self._ping_outstanding:
            deadline = min(deadline, self.last_received + self._keepalive_interval)
        if self._timer is not None:
            if deadline >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._endpoint.loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        try:
            now = time.monotonic()
            timer = self._quic.get_timer()
            due = timer is not None and now >= timer
            if due:
                self._quic.handle_timer(now)
                self._handle_events()
            if self.established and not self.closed:
                due = self._keepalive(now) or due
            if due:
                self._transmit()  # now: what the timer was for (an ack, a probe) is due; re-arms
            elif not self.closed:
                self._arm_timer()  # the deadline moved on (an ack came): nothing to build
        except Exception as exc:  # aioquic's own bug ends this connection, not the loop
            self._internal_error("timer", exc)

    def _keepalive(self, now: float) -> bool:
        """A PING after ``keepalive_interval`` of silence (True: one is to be sent);
        aioquic's idle timeout ends the connection if nothing comes back."""
        if not self._ping_outstanding and now - self.last_received >= self._keepalive_interval:
            self._ping_outstanding = True
            self._quic.send_ping(0)
            return True
        return False

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """From the endpoint: feed aioquic, handle its events, send what it has."""
        if self.closed:
            return
        now = self.last_received = time.monotonic()
        self._quic.receive_datagram(data, addr, now)
        space = self._app_space()
        if space is not None and space.ack_at is not None:
            self._unacked_datagrams += 1
            if self._unacked_datagrams >= ACK_EVERY and space.ack_at > now:
                space.ack_at = now  # sent by this pass's transmit
        self._after_input()
        self._progress.fire()

    def _after_input(self) -> None:
        self._handle_events()
        self._transmit_soon()

    def _transmit_soon(self, data: bool = False) -> None:
        """Transmit once the event loop has run what is ready: the replies that input
        wakes and acks leave together, and one aioquic pass builds them (each pass costs
        about as much as handling a datagram). ``data``: a stream was written, and the
        pass sends any ack it owes along with the data (see ``_transmit``)."""
        if data:
            self._ack_with_data = True
        if not self._transmit_scheduled:
            self._transmit_scheduled = True
            self._endpoint.loop.call_soon(self._scheduled_transmit)

    def _scheduled_transmit(self) -> None:
        self._transmit_scheduled = False
        try:
            self._transmit()
        except Exception as exc:  # aioquic's own bug ends this connection, not the loop
            self._internal_error("transmit", exc)

    def _internal_error(self, what: str, exc: Exception) -> None:
        self._endpoint.internal_error(what, exc)
        try:
            self.abort()
        except Exception:
            self._shutdown()

    def _transmit(self) -> None:
        """Send what aioquic has, then arm the timer for what it waits for next.

        aioquic puts an ack in a 1-RTT packet only once the ack's delay has run out, so
        a reply built sooner would leave without the ack of its request, and a packet
        of its own would carry the ack later: two datagrams to build, send, wake the
        peer for and parse instead of one, on each side, per request. When stream data
        goes out, the ack owed goes with it (RFC 9000 13.2.1 lets an ack be sent any
        time before max_ack_delay); input alone waits for ``ACK_DELAY`` or
        ``ACK_EVERY`` datagrams (``datagram_received``), so that a reply written in the
        next pass, or the next request, can carry it."""
        if self.closed and self._endpoint.closing:
            return
        now = time.monotonic()
        space = self._app_space()
        if self._ack_with_data:
            self._ack_with_data = False
            if space is not None and space.ack_at is not None and space.ack_at > now:
                space.ack_at = now
        for data, addr in self._quic.datagrams_to_send(now):
            self._endpoint.send(data, addr)
        if space is not None and space.ack_at is None:
            self._unacked_datagrams = 0
        if not self.closed:
            self._arm_timer()

    def _app_space(self) -> QuicPacketSpace | None:
        """aioquic's (private) state of the 1-RTT packet space: its ``ack_at`` is when it
        sends the ack it owes. aioquic makes it anew when a client's handshake restarts
        (Retry, version negotiation), and then keeps it: kept here once established."""
        if self._space is not None:
            return self._space
        space = self._quic._spaces.get(tls.Epoch.ONE_RTT)
        if self.established:
            self._space = space
        return space

    def _unacked(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        return 0 if stream is None else len(stream.sender._buffer)

    # -- aioquic's events ------------------------------------------------------------

    def _handle_events(self) -> None:
        while (event := self._quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self._on_stream_data(event)
            elif isinstance(event, events.StreamReset):
                if (stream := self._streams.get(event.stream_id)) is not None:
                    stream._mark_reset()
            elif isinstance(event, events.StopSendingReceived):
                if (stream := self._streams.get(event.stream_id)) is not None:
                    stream._write_stopped = True
                    stream._local_closed = True
                    self._forget_if_done(stream)
            elif isinstance(event, events.HandshakeCompleted):
                self._on_handshake(event.alpn_protocol)
            elif isinstance(event, events.PingAcknowledged):
                self._ping_outstanding = False
            elif isinstance(event, events.ConnectionIdIssued):
                self._endpoint.register(event.connection_id, self)
            elif isinstance(event, events.ConnectionIdRetired):
                self._endpoint.unregister(event.connection_id, self)
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error {event.error_code:#x}"
                if not self.established and not self.handshake_error:
                    self.handshake_error = f"closed by the peer or QUIC: {reason}"
                elif self.established and event.reason_phrase == "Idle timeout":  # aioquic's words
                    self.liveness_failure = "keepalive_timeouts"
                log.debug("%r: terminated: %s", self, reason)
                self._shutdown()
                return

    def _on_handshake(self, alpn: str | None) -> None:
        try:
            key = self._authenticate(alpn)
        except CertificateError as exc:
            self._refuse(str(exc))
            return
        self._remote_public_key = key
        self.remote_peer = key.peer_id()
        if self.expected_peer is not None and self.remote_peer != self.expected_peer:
            self._refuse(f"peer id mismatch: dialled {self.expected_peer}, the certificate names {self.remote_peer}")
            return
        self.established = True
        self.opened_at = time.monotonic()
        self._changed.fire()

    def _authenticate(self, alpn: str | None) -> PublicKey:
        if alpn != ALPN:
            raise CertificateError(f"ALPN {alpn!r}, not {ALPN!r}")
        tls = self._quic.tls
        cert = tls._peer_certificate
        if cert is None:
            raise CertificateError("the peer sent no certificate")
        if tls._peer_certificate_chain:
            raise CertificateError("the peer sent more than one certificate")
        return verify_certificate(cert.public_bytes(Encoding.DER))

    def _refuse(self, reason: str) -> None:
        self.handshake_error = reason
        self._fail(ERROR_CERTIFICATE, reason)

    def _fail(self, error_code: int, reason: str) -> None:
        log.debug("%r: closing: %s", self, reason)
        self._quic.close(error_code=error_code, reason_phrase=reason[:100])
        self._transmit()
        self._shutdown()

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id % 4 != self._next_remote_stream % 4:
                if stream_id & 2:  # unidirectional: libp2p uses none
                    self._stop_unidirectional(stream_id)
                return  # a stream of ours already forgotten
            if stream_id < self._next_remote_stream:
                return  # one we reset or finished
            self._accept_streams_up_to(stream_id)
            stream = self._streams.get(stream_id)
            if stream is None:
                return
        if event.data or event.end_stream:
            stream._on_data(event.data, event.end_stream)
            self.last_active = time.monotonic()

    def _stop_unidirectional(self, stream_id: int) -> None:
        try:
            self._quic.stop_stream(stream_id, ERROR_STREAM_RESET)
        except ValueError:
            pass

    def _accept_streams_up_to(self, stream_id: int) -> None:
        # A QUIC stream id opens every lower one of its type (RFC 9000 3.2).
        while self._next_remote_stream <= stream_id:
            sid = self._next_remote_stream
            self._next_remote_stream += 4
            if not self.established or self.closed:
                continue
            try:
                if len(self._streams) >= self._max_streams:
                    raise ResourceLimitExceeded(f"{self._max_streams} streams per connection")
                resources = self.resources.open_stream(inbound=True)
            except ResourceLimitExceeded:
                self._abort_stream(sid)
                continue
            stream = Stream(self, sid, initiator=False, resources=resources)
            self._streams[sid] = stream
            if self._task_group is not None:
                self._task_group.start_soon(self._on_inbound_stream, stream)
            else:
                self._waiting_streams.append(stream)

    def _abort_stream(self, stream_id: int) -> None:
        try:
            self._quic.reset_stream(stream_id, ERROR_STREAM_RESET)
            self._quic.stop_stream(stream_id, ERROR_STREAM_RESET)
        except ValueError:
            pass

    def _spawn_reset(self, stream: Stream) -> None:
        self._abort_stream(stream.stream_id)
        stream._mark_reset()

    # -- streams -----------------------------------------------------------------------

    async def open_stream(self) -> Stream:
        """A new outbound stream; NetworkError when the stream limits are reached."""
        if self.closed:
            raise anyio.BrokenResourceError
        if len(self._streams) >= self._max_streams:
            raise NetworkError(f"cannot open a stream to {self.remote_peer}: {self._max_streams} streams open")
        try:
            resources = self.resources.open_stream(inbound=False)
        except ResourceLimitExceeded as exc:
            raise NetworkError(f"cannot open a stream to {self.remote_peer}: {exc}") from None
        stream_id = self._quic.get_next_available_stream_id()
        # aioquic creates the stream on its first send; an empty one makes the id taken
        self._quic.send_stream_data(stream_id, b"")
        stream = Stream(self, stream_id, initiator=True, resources=resources)
        self._streams[stream_id] = stream
        self.last_active = time.monotonic()
        return stream

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        stream.resources.close()

    def _forget_if_done(self, stream: Stream) -> None:
        if stream._local_closed and stream._remote_closed:
            self._forget(stream)

    # -- ending ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close with NO_ERROR and wait for ``run`` to finish."""
        if not self.closed:
            self._quic.close(error_code=0)
            self._transmit()
            self._shutdown()
        if self._task_group is not None:
            await self._closed_event.wait()

    def abort(self) -> None:
        """Give up on a connection whose handshake failed or timed out."""
        if not self.closed:
            self._quic.close(error_code=0x1, reason_phrase="handshake failed")  # INTERNAL_ERROR
            self._transmit()
            self._shutdown()

    def _shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self._streams.values()):
            stream._mark_reset()
        for stream in self._waiting_streams:
            stream.resources.close()
        self.resources.close()
        self._endpoint.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._changed.fire()
        self._progress.fire()


Admit = Callable[[str], "ConnectionScope | None"]
Accepted = Callable[[Connection], None]


class QuicTransport:
    """What the host's QUIC endpoints share: the identity's certificate and the limits."""

    def __init__(
        self,
        identity: PrivateKey,
        *,
        max_streams: int,
        on_inbound_stream: InboundStreamTask,
        keepalive_interval: float = KEEPALIVE,
    ):
        self.identity = identity
        self.on_inbound_stream = on_inbound_stream
        self.max_streams = max_streams
        self.keepalive_interval = keepalive_interval
        self._certificate: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None

    def configuration(self, *, is_client: bool) -> QuicConfiguration:
        if self._certificate is None:
            self._certificate = make_certificate(self.identity)
        key, cert = self._certificate
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            certificate=cert,
            private_key=key,
            verify_mode=ssl.CERT_NONE,  # the libp2p checks run after the handshake
            idle_timeout=IDLE_TIMEOUT,
            connection_id_length=CONNECTION_ID_LENGTH,
            supported_versions=[QuicProtocolVersion.VERSION_1],
        )


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket and the QUIC connections on it, by connection id."""

    def __init__(
        self,
        transport: QuicTransport,
        stats: Any,
        admit: Admit | None = None,
        accepted: Accepted | None = None,
        sock: socket.socket | None = None,
    ):
        self._quic_transport = transport
        self._stats = stats
        self._admit = admit  # None: dial-only, Initials from unknown peers are dropped
        self._accepted = accepted
        self._udp: asyncio.DatagramTransport | None = None
        self._sock = sock  # the socket asyncio reads, read here too in batches
        self.loop = asyncio.get_running_loop()
        self._by_cid: dict[bytes, Connection] = {}
        self._cids: dict[Connection, set[bytes]] = {}
        self.local_addr = Multiaddr("/ip4/0.0.0.0/udp/0/quic-v1")
        self.closing = False

    # asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._udp = cast(asyncio.DatagramTransport, transport)
        sockname = self._udp.get_extra_info("sockname")
        self.local_addr = quic_multiaddr(sockname[0], sockname[1])

    def error_received(self, exc: Exception) -> None:
        self._stats["quic_socket_errors"] += 1
        log.debug("UDP error on %s: %s", self.local_addr, exc)  # e.g. ICMP unreachable

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """asyncio reads one datagram per pass of its loop; the rest that wait in the
        socket are read here too (up to ``READ_BATCH``), so 50 busy connections do not
        each wait 50 passes for their next datagram."""
        self._handle_datagram(data, addr)
        if self._sock is None:
            return
        for _ in range(READ_BATCH):
            try:
                data, addr = self._sock.recvfrom(MAX_UDP_PAYLOAD)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self._handle_datagram(data, addr)

    def _handle_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        conn: Connection | None = None
        if len(data) > CONNECTION_ID_LENGTH and data[0] & 0xC0 == 0x40:
            # A short header (RFC 9000 17.3, the fixed bit set): the connection id follows
            # the first byte. The established connections' datagrams, nearly all of them,
            # need no parse of their header here (aioquic parses it again anyway).
            conn = self._by_cid.get(data[1 : 1 + CONNECTION_ID_LENGTH])
        try:
            if conn is None:
                try:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
                except ValueError:
                    self._stats["quic_malformed_datagrams"] += 1
                    return
                conn = self._by_cid.get(header.destination_cid)
                if conn is None:
                    self._new_inbound(header, data, addr)
                    return
            conn.datagram_received(data, addr)
        except Exception as exc:  # aioquic's own bug must not take the socket down
            if conn is not None:
                conn._internal_error(f"input from {addr}", exc)
            else:
                self.internal_error(f"input from {addr}", exc)

    def internal_error(self, what: str, exc: Exception) -> None:
        self._stats["internal_errors"] += 1
        log.warning("QUIC %s failed: %s: %s", what, type(exc).__name__, exc)
        log.debug("QUIC %s failure", what, exc_info=True)

    def _new_inbound(self, header: Any, data: bytes, addr: tuple[Any, ...]) -> None:
        if (
            self._admit is None
            or self._accepted is None
            or self.closing
            or header.packet_type != QuicPacketType.INITIAL
            or header.version != QuicProtocolVersion.VERSION_1
            or len(data) < MIN_INITIAL_SIZE
        ):
            self._stats["quic_dropped_datagrams"] += 1
            return
        scope = self._admit(str(addr[0]))
        if scope is None:
            return
        quic = _ServerQuic(
            configuration=self._quic_transport.configuration(is_client=False),
            original_destination_connection_id=header.destination_cid,
        )
        conn = self._connection(quic, initiator=False, remote=addr, expected_peer=None, scope=scope)
        conn.datagram_received(data, addr)
        if quic._spaces[tls.Epoch.INITIAL].largest_received_packet < 0:
            # Nothing in it decrypted with the keys its connection id gives: not the
            # start of a connection, and no state may stay behind for it.
            self._stats["quic_dropped_datagrams"] += 1
            conn._shutdown()
            return
        self.register(header.destination_cid, conn)
        self.register(quic.host_cid, conn)
        self._accepted(conn)

    def _connection(
        self, quic: AioQuicConnection, *, initiator: bool, remote: tuple[Any, ...], expected_peer: PeerId | None, scope: ConnectionScope
    ) -> Connection:
        t = self._quic_transport
        return Connection(
            self,
            quic,
            initiator=initiator,
            remote=remote,
            expected_peer=expected_peer,
            resources=scope,
            max_streams=t.max_streams,
            on_inbound_stream=t.on_inbound_stream,
            keepalive_interval=t.keepalive_interval,
        )

    def dial(self, host: str, port: int, expected_peer: PeerId, scope: ConnectionScope) -> Connection:
        """A new outbound connection, its Initial sent; ``handshake`` it next."""
        if self.closing or self._udp is None:
            raise NetworkError("QUIC endpoint is closed")
        quic = AioQuicConnection(configuration=self._quic_transport.configuration(is_client=True))
        remote = _socket_address(host, port, self._udp)
        conn = self._connection(quic, initiator=True, remote=remote, expected_peer=expected_peer, scope=scope)
        self.register(quic.host_cid, conn)
        quic.connect(remote, time.monotonic())
        conn._transmit()
        return conn

    def register(self, cid: bytes, conn: Connection) -> None:
        if conn.closed:
            return
        self._by_cid[cid] = conn
        self._cids.setdefault(conn, set()).add(cid)

    def unregister(self, cid: bytes, conn: Connection) -> None:
        if self._by_cid.get(cid) is conn:
            del self._by_cid[cid]
        self._cids.get(conn, set()).discard(cid)

    def forget(self, conn: Connection) -> None:
        for cid in self._cids.pop(conn, ()):
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]

    def send(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(data, addr)

    @property
    def num_connections(self) -> int:
        return len(self._cids)

    def close(self) -> None:
        self.closing = True
        if self._udp is not None:
            self._udp.close()


def _socket_address(host: str, port: int, udp: asyncio.DatagramTransport) -> tuple[Any, ...]:
    """The address form the socket reports for ``host`` (4-tuple on IPv6), so aioquic
    matches the replies' address to the path it dialled."""
    sock = udp.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_INET6:
        return (host, port, 0, 0)
    return (host, port)


def quic_multiaddr(host: str, port: int) -> Multiaddr:
    return multiaddrs.from_quic_endpoint(host.split("%")[0], port)


async def open_endpoint(
    transport: QuicTransport, stats: Any, host: str, port: int, admit: Admit | None = None, accepted: Accepted | None = None
) -> Endpoint:
    """A UDP socket bound to ``host``:``port`` (0: any port), listening if ``admit`` is given."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:  # a burst of a congestion window must not overflow the kernel's queue
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass
        if sock.family == socket.AF_INET6:  # as asyncio's TCP listeners: /ip6 and /ip4 bind apart
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        _, endpoint = await loop.create_datagram_endpoint(lambda: Endpoint(transport, stats, admit, accepted, sock), sock=sock)
    except BaseException:
        sock.close()
        raise
    return endpoint
