"""Kademlia messages: ``dhtstore.types.Message`` ↔ ``proto/dht.proto`` bytes, and the
unsigned-varint length framing of a kad stream.

Decoding is strict where a mistake would hurt and forgiving where go is:
- a message that is not valid protobuf, or has an unknown type, is refused
  (KadCodecError; the caller resets the stream);
- a peer entry whose id is not a peer id is skipped and counted in
  ``Message.skipped_peers``; addresses that are not valid multiaddrs are dropped;
- at most ``MAX_CLOSER_PEERS`` closer peers are kept (go-libp2p-kad-dht PR #1270);
- a peer entry over ``MAX_PEER_RECORD_SIZE`` keeps only the addresses that fit
  (go ``pb/message.go``), on encode and decode alike.

``FrameDecoder`` is sans-I/O: bytes in, messages out. A length prefix over the limit
is refused as soon as the varint is complete, before any body is buffered; within the
limit, the body's length is reserved from the stream's resource scope first, and a
reservation over budget raises ``ResourceLimitExceeded``: the caller resets the stream.
The scope is the one given, or else, for a decoder made by an inbound stream's handler
itself, that stream's (the host sets it for the handler's task; a task the handler
starts inherits it, so code that may run there passes its own stream's scope).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from google.protobuf.message import DecodeError

from .. import varint
from ..amino import MAX_CLOSER_PEERS, MAX_MESSAGE_SIZE, MAX_PEER_RECORD_SIZE
from ..errors import ProtocolViolation
from ..pb import dht_pb2
from ..peerid import PeerId, PeerIdError
from ..types import ConnectionType, Message, MessageType, PeerInfo, Record
from . import multiaddrs
from .resources import StreamScope, current_stream_scope

_PEER_OVERHEAD = 8  # field tags and length prefixes around a peer's id and addresses


class KadCodecError(ProtocolViolation):
    """A kad frame or message that does not parse."""


class MessageTooLarge(KadCodecError):
    """A message over the size limit, refused before its body is read."""


def _peer_to_pb(peer: PeerInfo, out: dht_pb2.Message.Peer) -> None:
    peer_id = peer.peer_id.to_bytes()
    out.id = peer_id
    size = len(peer_id) + _PEER_OVERHEAD
    for addr in peer.addrs:
        size += len(addr) + 3
        if size > MAX_PEER_RECORD_SIZE:
            break
        out.addrs.append(addr)
    out.connection = cast("dht_pb2.Message.ConnectionType", int(peer.connection))


def encode_message(message: Message) -> bytes:
    """The protobuf bytes of ``message`` (no length prefix)."""
    pb = dht_pb2.Message(type=cast("dht_pb2.Message.MessageType", int(message.type)), key=message.key)
    if message.record is not None:
        pb.record.key = message.record.key
        pb.record.value = message.record.value
        pb.record.timeReceived = message.record.time_received
    for peer in message.closer_peers:
        _peer_to_pb(peer, pb.closerPeers.add())
    for peer in message.provider_peers:
        _peer_to_pb(peer, pb.providerPeers.add())
    return pb.SerializeToString()


def _peer_from_pb(pb: dht_pb2.Message.Peer) -> PeerInfo | None:
    try:
        peer_id = PeerId.from_bytes(pb.id)
    except PeerIdError:
        return None
    addrs = []
    size = len(pb.id) + _PEER_OVERHEAD
    for addr in pb.addrs:
        size += len(addr) + 3
        if size > MAX_PEER_RECORD_SIZE:
            break
        if multiaddrs.is_valid(addr):
            addrs.append(bytes(addr))
    try:
        connection = ConnectionType(pb.connection)
    except ValueError:
        connection = ConnectionType.NOT_CONNECTED
    return PeerInfo(peer_id, tuple(addrs), connection)


def _peers_from_pb(entries: Iterable[dht_pb2.Message.Peer], limit: int | None) -> tuple[tuple[PeerInfo, ...], int]:
    peers: list[PeerInfo] = []
    skipped = 0
    for entry in entries:
        if limit is not None and len(peers) >= limit:
            break
        peer = _peer_from_pb(entry)
        if peer is None:
            skipped += 1
        else:
            peers.append(peer)
    return tuple(peers), skipped


def decode_message(data: bytes) -> Message:
    """Parse one message body; KadCodecError if it is not a kad message."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"message of {len(data)} bytes is over {MAX_MESSAGE_SIZE}")
    pb = dht_pb2.Message()
    try:
        pb.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise KadCodecError(f"malformed kad message: {exc}") from None
    try:
        message_type = MessageType(pb.type)
    except ValueError:
        raise KadCodecError(f"unknown kad message type {pb.type}") from None
    record = None
    if pb.HasField("record"):
        record = Record(pb.record.key, pb.record.value, pb.record.timeReceived)
    closer, skipped_closer = _peers_from_pb(pb.closerPeers, MAX_CLOSER_PEERS)
    providers, skipped_providers = _peers_from_pb(pb.providerPeers, None)
    return Message(
        type=message_type,
        key=pb.key,
        record=record,
        closer_peers=closer,
        provider_peers=providers,
        skipped_peers=skipped_closer + skipped_providers,
    )


def encode_frame(message: Message) -> bytes:
    """``message`` with its unsigned-varint length prefix, ready for a kad stream."""
    body = encode_message(message)
    if len(body) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"message of {len(body)} bytes is over {MAX_MESSAGE_SIZE}")
    return varint.encode(len(body)) + body


class FrameDecoder:
    """Splits a kad stream's bytes into messages."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE, memory: StreamScope | None = None):
        self._max_size = max_size
        self._memory = memory if memory is not None else current_stream_scope.get()
        self._buffer = bytearray()
        self._body_length: int | None = None  # known once the prefix is complete

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    @property
    def in_frame(self) -> bool:
        """True when part of a frame has arrived: an end of stream now is a truncation."""
        return self._body_length is not None or bool(self._buffer)

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive.

        Raises MessageTooLarge for a length over the limit (as soon as the prefix is
        read), ResourceLimitExceeded when the body's memory cannot be reserved, and
        KadCodecError for a malformed prefix or body.
        """
        if self._body_length is None:
            try:
                decoded = varint.decode(self._buffer)
            except varint.VarintError as exc:
                raise KadCodecError(f"bad length prefix: {exc}") from None
            if decoded is None:
                return None
            length, offset = decoded
            if length > self._max_size:
                raise MessageTooLarge(f"frame of {length} bytes is over {self._max_size}")
            if self._memory is not None:
                self._memory.reserve_memory(length)
            del self._buffer[:offset]
            self._body_length = length
        if len(self._buffer) < self._body_length:
            return None
        length = self._body_length
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._body_length = None
        if self._memory is not None:
            self._memory.release_memory(length)
        return decode_message(body)
