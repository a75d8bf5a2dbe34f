"""Identify messages (``/ipfs/id/1.0.0`` and ``/ipfs/id/push/1.0.0``): building ours
and parsing the peer's, with no I/O (libp2p specs, identify/README.md; limits as in
go-libp2p ``p2p/protocol/identify``). ``network.identifyservice`` runs the protocols on a host.

On the wire the message (``proto/identify.proto``) is uvarint-length-delimited; the
responder writes it and closes the stream. Like go, a reader accepts up to
``MAX_MESSAGES`` delimited messages of at most ``MAX_MESSAGE_SIZE`` bytes each and
merges them (a large identify may be split). We send at most
``MAX_OWN_MESSAGE_SIZE`` bytes, rust-libp2p's limit, dropping listen addresses that
do not fit.

The identify service reads the whole stream (at most ``MAX_STREAM_BYTES``) and calls
``parse_identify(data, remote_peer)``. Invalid listen addresses, an invalid observed
address, invalid protocol ids and versions that are not UTF-8 are skipped and counted in ``IdentifyInfo.skipped``;
so are the listen addresses past ``MAX_LISTEN_ADDRS`` and the protocols past
``MAX_PROTOCOLS`` (go's caps), counted without being looked at: the work per message is
bounded by the caps, not by how much a peer crams into its 80 KiB;
a public key that does not parse or is not the connection's peer, an oversized or
malformed message raise ``IdentifyError``.

Push semantics: fields a push leaves out mean "unchanged"; ``IdentifyInfo.updated_by``
applies a push to what we knew.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from .. import varint
from ..crypto.keys import KeyFormatError, PublicKey
from ..errors import ProtocolViolation
from ..pb import identify_pb2
from ..peerid import PeerId
from . import multiaddrs

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
DEFAULT_PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_MESSAGE_SIZE = 8 * 1024  # go-libp2p signedIDSize
MAX_MESSAGES = 10  # go-libp2p maxMessages
MAX_OWN_MESSAGE_SIZE = 4 * 1024  # go-libp2p maxOwnIdentifyMsgSize, for rust-libp2p
MAX_STREAM_BYTES = MAX_MESSAGES * (MAX_MESSAGE_SIZE + 2)  # each prefix is a 2-byte varint
MAX_PROTOCOL_ID_LENGTH = 1024  # a longer id could never be negotiated by multistream
MAX_LISTEN_ADDRS = 500  # go-libp2p identify connectedPeerMaxAddrs
MAX_PROTOCOLS = 1024  # go-libp2p identify maxPeerProtocols

__all__ = [
    "MAX_LISTEN_ADDRS",
    "MAX_PROTOCOLS",
    "MAX_STREAM_BYTES",
    "PROTOCOL_ID",
    "PUSH_PROTOCOL_ID",
    "IdentifyError",
    "IdentifyInfo",
    "build_identify",
    "parse_identify",
]


class IdentifyError(ProtocolViolation):
    """An identify message that is malformed, too large, or about another peer."""


@dataclass(frozen=True, slots=True)
class IdentifyInfo:
    """What a peer told us. ``None`` or an empty tuple means the field was not sent."""

    public_key: PublicKey | None = None
    peer_id: PeerId | None = None
    listen_addrs: tuple[bytes, ...] = ()  # binary multiaddrs, each checked
    protocols: tuple[str, ...] = ()
    observed_addr: bytes | None = None
    protocol_version: str | None = None
    agent_version: str | None = None
    signed_peer_record: bytes | None = None  # kept raw, not verified or used
    skipped: int = dataclasses.field(default=0, compare=False)  # invalid entries dropped

    def updated_by(self, push: IdentifyInfo) -> IdentifyInfo:
        """This info with the fields that ``push`` carries replaced."""
        changes = {
            f.name: getattr(push, f.name)
            for f in dataclasses.fields(self)
            if f.name != "skipped" and getattr(push, f.name) not in (None, ())
        }
        return dataclasses.replace(self, **changes, skipped=push.skipped)


def build_identify(
    public_key: PublicKey,
    listen_addrs: Sequence[bytes],
    protocols: Sequence[str],
    observed_addr: bytes | None,
    agent_version: str,
    protocol_version: str = DEFAULT_PROTOCOL_VERSION,
) -> bytes:
    """Our identify message, length-delimited and ready to write (≤ MAX_OWN_MESSAGE_SIZE)."""
    message = identify_pb2.Identify(
        protocolVersion=protocol_version,
        agentVersion=agent_version,
        publicKey=public_key.to_protobuf(),
        protocols=list(protocols),
    )
    if observed_addr:
        message.observedAddr = observed_addr
    for addr in listen_addrs:
        message.listenAddrs.append(addr)
        if message.ByteSize() > MAX_OWN_MESSAGE_SIZE:
            del message.listenAddrs[-1]  # addresses that do not fit are left out, as go does
            break
    body = message.SerializeToString()
    if len(body) > MAX_OWN_MESSAGE_SIZE:
        raise ValueError(f"identify message of {len(body)} bytes even without addresses")
    return varint.encode(len(body)) + body


def parse_identify(data: bytes, remote_peer: PeerId | None = None) -> IdentifyInfo:
    """Parse everything read from an identify (or push) stream: one or more delimited
    messages, merged. ``remote_peer``, when given, must match the public key sent."""
    message = identify_pb2.Identify()
    for body in _split_messages(data):
        try:
            message.MergeFromString(body)
        except DecodeError:
            raise IdentifyError("identify message does not parse") from None
    skipped = 0

    public_key = peer_id = None
    if message.HasField("publicKey"):
        try:
            public_key = PublicKey.from_protobuf(message.publicKey)
        except KeyFormatError as exc:
            raise IdentifyError(f"identify public key: {exc}") from None
        peer_id = public_key.peer_id()
        if remote_peer is not None and peer_id != remote_peer:
            raise IdentifyError(f"identify public key is {peer_id}, not the connection's {remote_peer}")

    listen_addrs = []
    skipped += max(0, len(message.listenAddrs) - MAX_LISTEN_ADDRS) + max(0, len(message.protocols) - MAX_PROTOCOLS)
    for addr in message.listenAddrs[:MAX_LISTEN_ADDRS]:
        if multiaddrs.is_valid(addr):
            listen_addrs.append(bytes(addr))
        else:
            skipped += 1
    observed_addr = None
    if message.HasField("observedAddr"):
        if multiaddrs.is_valid(message.observedAddr):
            observed_addr = bytes(message.observedAddr)
        else:
            skipped += 1
    protocols = []
    for protocol in message.protocols[:MAX_PROTOCOLS]:
        # proto2 hands back invalid UTF-8 as bytes rather than failing the parse.
        if isinstance(protocol, str) and 0 < len(protocol) <= MAX_PROTOCOL_ID_LENGTH and "\n" not in protocol:
            protocols.append(protocol)
        else:
            skipped += 1

    versions = {}
    for name in ("protocolVersion", "agentVersion"):
        value = getattr(message, name) if message.HasField(name) else None
        if value is not None and not isinstance(value, str):  # invalid UTF-8 comes back as bytes
            value = None
            skipped += 1
        versions[name] = value

    return IdentifyInfo(
        public_key=public_key,
        peer_id=peer_id,
        listen_addrs=tuple(listen_addrs),
        protocols=tuple(protocols),
        observed_addr=observed_addr,
        protocol_version=versions["protocolVersion"],
        agent_version=versions["agentVersion"],
        signed_peer_record=bytes(message.signedPeerRecord) if message.HasField("signedPeerRecord") else None,
        skipped=skipped,
    )


def _split_messages(data: bytes) -> list[bytes]:
    bodies: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(bodies) == MAX_MESSAGES:
            raise IdentifyError(f"more than {MAX_MESSAGES} identify messages")
        try:
            decoded = varint.decode(data, pos)
        except varint.VarintError as exc:
            raise IdentifyError(f"bad identify length prefix: {exc}") from None
        if decoded is None:
            raise IdentifyError("truncated identify length prefix")
        length, pos = decoded
        if length > MAX_MESSAGE_SIZE:
            raise IdentifyError(f"identify message of {length} bytes is over {MAX_MESSAGE_SIZE}")
        if pos + length > len(data):
            raise IdentifyError("truncated identify message")
        bodies.append(data[pos : pos + length])
        pos += length
    if not bodies:
        raise IdentifyError("empty identify stream")
    return bodies
