"""yamux (``/yamux/1.0.0``) as a sans-I/O state machine (libp2p specs, yamux/README.md,
and hashicorp's spec.md it refines).

Frames: a 12-byte big-endian header ``version(0) | type | flags | stream id | length``;
types Data (length = payload bytes that follow), WindowUpdate (length = window delta),
Ping and GoAway (stream 0; length = opaque value / error code). Flags SYN, ACK, FIN and
RST ride on Data or WindowUpdate frames. Clients use odd stream ids, servers even.

Use (h11 style, no sockets):

    mux = YamuxConnection(is_client=True)
    sid = mux.open_stream()
    accepted = mux.send_data(sid, payload)    # bytes within the peer's window
    sock.send(mux.data_to_send())
    mux.receive_data(sock.recv())
    while (event := mux.next_event()) is not NEED_DATA:
        ...                                   # StreamOpened, StreamData, StreamEnded, ...
    sock.send(mux.data_to_send())             # after next_event: pongs, ACKs, window updates

Flow control, both ways, per stream (no session window):
- send side: ``send_data`` returns how many bytes fit in the peer's window; the caller
  keeps the rest and waits for ``StreamWritable`` (emitted when a window update arrives
  on a stream whose last ``send_data`` was cut short).
- receive side: a window update is sent only when the application reports what it has
  read with ``consume(stream_id, n)``, and only once half a window is owed, as go-yamux
  does. Data beyond the window we granted is a ``YamuxError`` (checked from the header,
  before the payload is buffered).

Inbound streams are acknowledged (ACK) as their SYN arrives, with ``StreamOpened``.
Beyond ``max_streams`` open streams, or after either side has gone away, a new inbound
stream is reset at once. At most ``max_ack_backlog`` of our streams may await the
peer's ACK; ``open_stream`` raises ``StreamLimitError`` beyond that (wait for some
traffic, then retry).

Errors: any frame the spec forbids (bad version or type, data over the window, a frame
for a stream that was never opened, a SYN for an existing or wrong-parity id, data after
the remote's FIN, session frames on a stream id) raises ``YamuxError``; the host should
then ``go_away(GoAwayCode.PROTOCOL_ERROR)``, send, and close, and ``next_event`` keeps
raising the same error. Frames for streams that existed but are gone (reset or fully
closed) are dropped, since they may have been in flight.
Local calls on a stream that is not writable raise ``StreamClosedError``, which does not
mean the connection is broken.

Interface notes: ``is_client`` is True on the connection's dialer (odd ids), as in go,
js and rust. Besides the calls above: ``send_window(stream_id)`` (bytes the peer will
take now), ``stream_ids`` (open streams), ``local_going_away``/``remote_going_away``.
Receive-side flow control is ``consume`` (no separate ``acknowledge``).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass

from ..errors import ProtocolViolation
from .sansio import NEED_DATA, NeedData

PROTOCOL_ID = "/yamux/1.0.0"
VERSION = 0
HEADER = struct.Struct(">BBHII")
HEADER_LENGTH = HEADER.size
DEFAULT_WINDOW = 256 * 1024  # the initial window every stream starts with, by spec
MAX_FRAME_PAYLOAD = 64 * 1024  # we split our data into frames no larger (as js-yamux)
MAX_WINDOW = 2**32 - 1
MAX_STREAM_ID = 2**32 - 1

__all__ = [
    "DEFAULT_WINDOW",
    "NEED_DATA",
    "PROTOCOL_ID",
    "Flag",
    "FrameType",
    "GoAwayCode",
    "GoAwayReceived",
    "PingReceived",
    "PongReceived",
    "StreamClosedError",
    "StreamData",
    "StreamEnded",
    "StreamLimitError",
    "StreamOpened",
    "StreamReset",
    "StreamWritable",
    "YamuxConnection",
    "YamuxError",
]


class YamuxError(ProtocolViolation):
    """The remote broke the yamux protocol; go away with PROTOCOL_ERROR and close."""


class StreamClosedError(YamuxError):
    """A local call on a stream that is reset, closed for writing, or unknown."""


class StreamLimitError(YamuxError):
    """No stream can be opened now (too many open or unacknowledged, or going away)."""


class FrameType(enum.IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(enum.IntFlag):
    SYN = 0x1
    ACK = 0x2
    FIN = 0x4
    RST = 0x8


class GoAwayCode(enum.IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The remote half-closed the stream (FIN): no more data will come from it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """The peer's window opened again on a stream whose last send was cut short."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The remote pinged; the pong is already queued in ``data_to_send``."""

    opaque: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    opaque: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    code: int


Event = StreamOpened | StreamData | StreamEnded | StreamReset | StreamWritable | PingReceived | PongReceived | GoAwayReceived


class _Stream:
    __slots__ = ("acknowledged", "blocked", "local_open", "recv_window", "remote_open", "send_window", "unconsumed")

    def __init__(self, recv_window: int, acknowledged: bool) -> None:
        self.send_window = DEFAULT_WINDOW
        self.recv_window = recv_window  # bytes the peer may still send us
        self.unconsumed = 0  # delivered to the application, not yet credited back
        self.local_open = True
        self.remote_open = True
        self.blocked = False  # the last send_data was cut short by the window
        self.acknowledged = acknowledged


def _header(frame_type: FrameType, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(VERSION, frame_type, flags, stream_id, length)


class YamuxConnection:
    def __init__(
        self,
        is_client: bool,
        initial_window: int = DEFAULT_WINDOW,
        max_streams: int = 1024,
        max_ack_backlog: int = 256,
    ) -> None:
        if not DEFAULT_WINDOW <= initial_window <= MAX_WINDOW:
            raise ValueError(f"initial_window must be in [{DEFAULT_WINDOW}, {MAX_WINDOW}]")
        self.is_client = is_client
        self.initial_window = initial_window
        self.max_streams = max_streams
        self.max_ack_backlog = max_ack_backlog
        self._streams: dict[int, _Stream] = {}
        self._next_local_id = 1 if is_client else 2
        self._highest_remote_id = 0
        self._unacknowledged = 0  # our streams awaiting the peer's ACK
        self._next_ping = 1
        self._pings_in_flight: set[int] = set()
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._events: deque[Event] = deque()
        self.local_going_away = False
        self.remote_going_away = False
        self._error: YamuxError | None = None

    # -- bytes in and out -------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._inbox += data

    def data_to_send(self) -> bytes:
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise self._error
        try:
            while not self._events:
                if not self._read_frame():
                    return NEED_DATA
        except YamuxError as exc:
            self._error = exc
            raise
        return self._events.popleft()

    # -- local operations ---------------------------------------------------------

    @property
    def stream_ids(self) -> frozenset[int]:
        return frozenset(self._streams)

    def open_stream(self) -> int:
        if self.local_going_away or self.remote_going_away:
            raise StreamLimitError("the session is going away")
        if len(self._streams) >= self.max_streams:
            raise StreamLimitError(f"{self.max_streams} streams already open")
        if self._unacknowledged >= self.max_ack_backlog:
            raise StreamLimitError(f"{self.max_ack_backlog} streams await the peer's ACK")
        if self._next_local_id > MAX_STREAM_ID:
            raise StreamLimitError("stream ids exhausted")
        stream_id = self._next_local_id
        self._next_local_id += 2
        self._streams[stream_id] = _Stream(self.initial_window, acknowledged=False)
        self._unacknowledged += 1
        self._send_frame(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, self.initial_window - DEFAULT_WINDOW)
        return stream_id

    def send_data(self, stream_id: int, data: bytes) -> int:
        """Queue as much of ``data`` as the peer's window allows; return that count."""
        stream = self._writable(stream_id)
        accepted = min(len(data), stream.send_window)
        stream.blocked = accepted < len(data)
        view = memoryview(data)
        for start in range(0, accepted, MAX_FRAME_PAYLOAD):
            chunk = view[start : min(start + MAX_FRAME_PAYLOAD, accepted)]
            self._outbox += _header(FrameType.DATA, 0, stream_id, len(chunk))
            self._outbox += chunk
        stream.send_window -= accepted
        return accepted

    def send_window(self, stream_id: int) -> int:
        return self._writable(stream_id).send_window

    def close_stream(self, stream_id: int) -> None:
        """Half-close: send FIN. Reading goes on until the remote's StreamEnded."""
        stream = self._writable(stream_id)
        stream.local_open = False
        self._send_frame(FrameType.WINDOW_UPDATE, Flag.FIN, stream_id, 0)
        self._forget_if_done(stream_id, stream)

    def reset_stream(self, stream_id: int) -> None:
        """Abort both directions (RST). A no-op on a stream that is already gone."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._settle_ack(stream)
        self._send_frame(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)

    def consume(self, stream_id: int, n: int) -> None:
        """The application has read ``n`` bytes of the stream: credit them back to the
        peer (a window update once half a window is owed). A no-op on a gone stream."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open:
            return
        if not 0 <= n <= stream.unconsumed:
            raise ValueError(f"consume({n}) but only {stream.unconsumed} bytes were delivered")
        stream.unconsumed -= n
        owed = self.initial_window - stream.recv_window - stream.unconsumed
        if owed >= self.initial_window // 2:
            stream.recv_window += owed
            self._send_frame(FrameType.WINDOW_UPDATE, 0, stream_id, owed)

    def ping(self) -> int:
        """Send a ping; its PongReceived carries the returned opaque value."""
        opaque = self._next_ping
        self._next_ping = self._next_ping % (2**32 - 1) + 1  # opaque values are u32, never 0
        self._pings_in_flight.add(opaque)
        self._send_frame(FrameType.PING, Flag.SYN, 0, opaque)
        return opaque

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Tell the peer no new streams will be accepted; existing ones may finish."""
        if not self.local_going_away:
            self.local_going_away = True
            self._send_frame(FrameType.GO_AWAY, 0, 0, int(code))

    # -- internals --------------------------------------------------------------

    def _send_frame(self, frame_type: FrameType, flags: int, stream_id: int, length: int) -> None:
        self._outbox += _header(frame_type, flags, stream_id, length)

    def _writable(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open:
            raise StreamClosedError(f"stream {stream_id} is not open for writing")
        return stream

    def _is_local_id(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == self.is_client

    def _settle_ack(self, stream: _Stream) -> None:
        if not stream.acknowledged:
            stream.acknowledged = True
            self._unacknowledged -= 1

    def _forget_if_done(self, stream_id: int, stream: _Stream) -> None:
        if not stream.local_open and not stream.remote_open:
            self._settle_ack(stream)
            del self._streams[stream_id]

    def _read_frame(self) -> bool:
        """Handle one complete frame from the inbox; False when more bytes are needed."""
        inbox = self._inbox
        if len(inbox) < HEADER_LENGTH:
            return False
        version, frame_type, flags, stream_id, length = HEADER.unpack_from(inbox)
        if version != VERSION:
            raise YamuxError(f"unsupported yamux version {version}")
        if frame_type == FrameType.DATA:
            # The window bounds every data frame, so check before waiting for its payload.
            self._check_data_length(stream_id, length)
            if len(inbox) < HEADER_LENGTH + length:
                return False
            payload = bytes(inbox[HEADER_LENGTH : HEADER_LENGTH + length])
            del inbox[: HEADER_LENGTH + length]
            self._on_stream_frame(flags, stream_id, payload, 0)
        elif frame_type == FrameType.WINDOW_UPDATE:
            del inbox[:HEADER_LENGTH]
            self._on_stream_frame(flags, stream_id, b"", length)
        elif frame_type == FrameType.PING:
            del inbox[:HEADER_LENGTH]
            self._on_ping(flags, stream_id, length)
        elif frame_type == FrameType.GO_AWAY:
            del inbox[:HEADER_LENGTH]
            if stream_id != 0:
                raise YamuxError(f"go-away on stream {stream_id}")
            self.remote_going_away = True
            self._events.append(GoAwayReceived(length))
        else:
            raise YamuxError(f"unknown yamux frame type {frame_type}")
        return True

    def _check_data_length(self, stream_id: int, length: int) -> None:
        stream = self._streams.get(stream_id)
        # Data for a gone stream is drained; no stream ever had more than our window.
        window = stream.recv_window if stream is not None else self.initial_window
        if length > window:
            raise YamuxError(f"data frame of {length} bytes on stream {stream_id} exceeds the window of {window}")

    def _on_ping(self, flags: int, stream_id: int, opaque: int) -> None:
        if stream_id != 0:
            raise YamuxError(f"ping on stream {stream_id}")
        if flags & Flag.SYN:
            self._send_frame(FrameType.PING, Flag.ACK, 0, opaque)
            self._events.append(PingReceived(opaque))
        elif flags & Flag.ACK:
            if opaque in self._pings_in_flight:
                self._pings_in_flight.discard(opaque)
                self._events.append(PongReceived(opaque))
        else:
            raise YamuxError("ping with neither SYN nor ACK")

    def _on_stream_frame(self, flags: int, stream_id: int, payload: bytes, delta: int) -> None:
        if stream_id == 0:
            raise YamuxError("stream frame on the session id 0")
        stream = self._streams.get(stream_id)
        if flags & Flag.SYN:
            stream = self._open_inbound(stream_id)
            if stream is None:
                return  # refused with RST
        elif stream is None:
            if not self._was_opened(stream_id):
                raise YamuxError(f"frame for stream {stream_id}, which was never opened")
            return  # in flight when the stream went away: drop it
        if flags & Flag.ACK:
            self._settle_ack(stream)
        if delta:
            stream.send_window += delta
            if stream.send_window > MAX_WINDOW:
                raise YamuxError(f"window of stream {stream_id} grew past 2^32-1")
            if stream.blocked and stream.local_open:
                stream.blocked = False
                self._events.append(StreamWritable(stream_id))
        if payload:
            if not stream.remote_open:
                raise YamuxError(f"data on stream {stream_id} after its FIN")
            stream.recv_window -= len(payload)
            stream.unconsumed += len(payload)
            self._events.append(StreamData(stream_id, payload))
        if flags & Flag.RST:
            del self._streams[stream_id]
            self._settle_ack(stream)
            self._events.append(StreamReset(stream_id))
        elif flags & Flag.FIN:
            if stream.remote_open:
                stream.remote_open = False
                self._events.append(StreamEnded(stream_id))
                self._forget_if_done(stream_id, stream)

    def _was_opened(self, stream_id: int) -> bool:
        if self._is_local_id(stream_id):
            return stream_id < self._next_local_id
        return stream_id <= self._highest_remote_id

    def _open_inbound(self, stream_id: int) -> _Stream | None:
        if self._is_local_id(stream_id):
            raise YamuxError(f"remote opened stream {stream_id}, an id of our parity")
        if stream_id <= self._highest_remote_id:
            raise YamuxError(f"remote reopened stream {stream_id}")
        self._highest_remote_id = stream_id
        if self.local_going_away or self.remote_going_away or len(self._streams) >= self.max_streams:
            self._send_frame(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
            return None
        stream = _Stream(self.initial_window, acknowledged=True)
        self._streams[stream_id] = stream
        self._send_frame(FrameType.WINDOW_UPDATE, Flag.ACK, stream_id, self.initial_window - DEFAULT_WINDOW)
        self._events.append(StreamOpened(stream_id))
        return stream
