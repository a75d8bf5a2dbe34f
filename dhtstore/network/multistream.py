"""multistream-select 1.0 as a sans-I/O state machine (libp2p specs, connections/README.md).

Every message is ``uvarint(len) ‖ UTF-8 text ‖ "\\n"`` where ``len`` counts the newline.
Both sides open with the header ``/multistream/1.0.0``; the dialer proposes protocol
ids one at a time and the listener echoes the one it accepts or answers ``na``.

Use (h11 style, no sockets):

    dialer = MultistreamDialer(["/tls/1.0.0", "/noise"])
    sock.send(dialer.data_to_send())          # header and first proposal at once
    dialer.receive_data(sock.recv())
    event = dialer.next_event()               # NEED_DATA, ProtocolAgreed or NegotiationFailed
    sock.send(dialer.data_to_send())          # after every next_event: the next proposal, an echo

``ProtocolAgreed.leftover`` holds bytes that arrived after the final negotiation
message: they already belong to the agreed protocol (a dialer may send its first
protocol bytes before the echo comes back, as js-libp2p does), and must be handed on.

Bad input (a line over ``MAX_MESSAGE_LENGTH``, a missing newline, invalid UTF-8, a
wrong header, an answer that is neither the proposal nor ``na``, too many proposals)
raises ``MultistreamError``; a length over the limit is refused from the varint alone.
After an error every further ``next_event`` raises it again.
The listener answers ``na`` to ``ls`` (allowed by the spec; we do not list protocols).

Interface notes: ``finished`` tells whether the final event has been produced (it is
then returned by every ``next_event``, and ``receive_data`` refuses more bytes);
``MultistreamDialer.proposing`` is the protocol awaiting an answer; a dialer that wants
to save a round trip (one protocol, as js-libp2p does) may write protocol bytes right
after ``data_to_send()`` without waiting for ``ProtocolAgreed``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from .. import varint
from ..errors import ProtocolViolation
from .sansio import NEED_DATA, NeedData

PROTOCOL_ID = "/multistream/1.0.0"
NA = "na"
LS = "ls"
# go-multistream refuses messages over 1024 bytes (ErrTooLarge); so do we.
MAX_MESSAGE_LENGTH = 1024
# How many proposals a listener answers before giving up on the dialer.
MAX_PROPOSALS = 32

__all__ = [
    "NEED_DATA",
    "MAX_MESSAGE_LENGTH",
    "MAX_PROPOSALS",
    "PROTOCOL_ID",
    "MultistreamDialer",
    "MultistreamError",
    "MultistreamListener",
    "NegotiationFailed",
    "ProtocolAgreed",
    "encode_message",
]


class MultistreamError(ProtocolViolation):
    """The remote broke multistream-select; the stream or connection must be closed."""


@dataclass(frozen=True, slots=True)
class ProtocolAgreed:
    protocol: str
    leftover: bytes = b""


@dataclass(frozen=True, slots=True)
class NegotiationFailed:
    """The dialer ran out of proposals: the listener supports none of them."""

    reason: str


Event = ProtocolAgreed | NegotiationFailed


def encode_message(text: str) -> bytes:
    body = text.encode() + b"\n"
    if len(body) > MAX_MESSAGE_LENGTH:
        raise ValueError(f"multistream message of {len(body)} bytes is over {MAX_MESSAGE_LENGTH}")
    return varint.encode(len(body)) + body


def _check_protocol_id(protocol: str) -> None:
    if not protocol or "\n" in protocol:
        raise ValueError(f"invalid protocol id {protocol!r}")
    encode_message(protocol)  # checks the length


class _Negotiator:
    """What dialer and listener share: the receive buffer, the line reader, the outbox."""

    def __init__(self) -> None:
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._finished: Event | None = None
        self._seen_header = False
        self._error: MultistreamError | None = None  # once broken, always broken (as h11)

    def receive_data(self, data: bytes) -> None:
        if self._finished is not None:
            raise MultistreamError("negotiation already finished; bytes belong to the protocol")
        self._inbox += data

    def data_to_send(self) -> bytes:
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    @property
    def finished(self) -> bool:
        return self._finished is not None

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except MultistreamError as exc:
            self._error = exc
            raise

    def _next_event(self) -> Event | NeedData:
        if self._finished is not None:
            return self._finished
        while True:
            message = self._read_message()
            if message is None:
                return NEED_DATA
            if not self._seen_header:
                if message != PROTOCOL_ID:
                    raise MultistreamError(f"expected header {PROTOCOL_ID!r}, got {message[:64]!r}")
                self._seen_header = True
                continue
            event = self._handle(message)
            if event is not None:
                self._finished = event
                return event

    def _finish_agreed(self, protocol: str) -> ProtocolAgreed:
        leftover = bytes(self._inbox)
        self._inbox.clear()
        return ProtocolAgreed(protocol, leftover)

    def _handle(self, message: str) -> Event | None:
        raise NotImplementedError

    def _send(self, text: str) -> None:
        self._outbox += encode_message(text)

    def _read_message(self) -> str | None:
        try:
            decoded = varint.decode(self._inbox)
        except varint.VarintError as exc:
            raise MultistreamError(f"bad message length: {exc}") from None
        if decoded is None:
            return None
        length, start = decoded
        if length > MAX_MESSAGE_LENGTH:
            raise MultistreamError(f"message of {length} bytes is over {MAX_MESSAGE_LENGTH}")
        if length == 0:
            raise MultistreamError("empty message (no newline)")
        end = start + length
        if len(self._inbox) < end:
            return None
        body = bytes(self._inbox[start:end])
        del self._inbox[:end]
        if body[-1:] != b"\n":
            raise MultistreamError("message does not end with a newline")
        try:
            return body[:-1].decode()
        except UnicodeDecodeError:
            raise MultistreamError("message is not valid UTF-8") from None


class MultistreamDialer(_Negotiator):
    """Proposes ``protocols`` in order; the header and the first proposal go out at once."""

    def __init__(self, protocols: Sequence[str]) -> None:
        super().__init__()
        self._proposals = list(protocols)
        if not self._proposals:
            raise ValueError("a dialer needs at least one protocol to propose")
        for protocol in self._proposals:
            _check_protocol_id(protocol)
        self._index = 0
        self._send(PROTOCOL_ID)
        self._send(self._proposals[0])

    @property
    def proposing(self) -> str:
        """The protocol currently proposed (awaiting its echo or ``na``)."""
        return self._proposals[self._index]

    def _handle(self, message: str) -> Event | None:
        if message == self.proposing:
            return self._finish_agreed(message)
        if message != NA:
            raise MultistreamError(f"answer {message[:64]!r} to proposal {self.proposing!r}")
        self._index += 1
        if self._index == len(self._proposals):
            return NegotiationFailed(f"remote supports none of {self._proposals}")
        self._send(self.proposing)
        return None


class MultistreamListener(_Negotiator):
    """Answers proposals: echoes the first supported one, ``na`` to the rest.

    ``supported`` is a collection of protocol ids or a predicate. The header goes out at
    once. A listener never emits NegotiationFailed: the dialer gives up by closing, and a
    dialer that keeps proposing past ``MAX_PROPOSALS`` is a MultistreamError.
    """

    def __init__(self, supported: Callable[[str], bool] | Collection[str]) -> None:
        super().__init__()
        self._supported = supported if callable(supported) else frozenset(supported).__contains__
        self._refused = 0
        self._send(PROTOCOL_ID)

    def _handle(self, message: str) -> Event | None:
        if message != LS and message != NA and self._supported(message):
            self._send(message)
            return self._finish_agreed(message)
        self._refused += 1
        if self._refused > MAX_PROPOSALS:
            raise MultistreamError(f"dialer made more than {MAX_PROPOSALS} proposals")
        self._send(NA)
        return None
