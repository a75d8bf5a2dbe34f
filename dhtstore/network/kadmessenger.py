"""The libp2p ``KadMessenger``: Kademlia requests over ``/ipfs/kad/1.0.0`` streams.

As go-libp2p-kad-dht's ``messageSender`` does, one outbound stream per peer is kept
and reused for request after request (one at a time per peer: a request waits for
the previous reply on that stream). A reused stream that turns out dead (reset,
closed) is replaced and the request retried once on a fresh stream; a timeout is
not retried. Replies are read with a 10 s timeout.

``send`` (ADD_PROVIDER) writes the message and returns without waiting: go's server
never answers it. ipfs/specs says a server "responds by echoing the request", and
py-libp2p does: on a reused stream such an echo would be read as the reply to the next
request. So a request first skips one ADD_PROVIDER echo per send that it follows, and
after ``MAX_UNANSWERED_SENDS`` sends with no reply between them the next send is
preceded by a FIND_NODE for the peer's own id on the same stream, which reads the
echoes (they would otherwise fill the stream's receive window, and the peer would stop
reading). The stream is kept, so a later reply on it still proves that the peer read
every send before it, which is what the sweep's confirmation relies on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from ..amino import PROTOCOL_ID, READ_MESSAGE_TIMEOUT
from ..errors import NetworkError
from ..peerid import PeerId
from ..types import Message, MessageType, PeerInfo
from .api import CONNECTION_ERRORS, Host, Stream
from .kadcodec import FrameDecoder, KadCodecError, encode_frame

log = logging.getLogger(__name__)

MAX_UNANSWERED_SENDS = 64  # echoes of at most ~64 x 200 bytes wait unread on a stream


class _PeerSender:
    """The reusable outbound stream to one peer, and the lock that serialises its use."""

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.stream: Stream | None = None
        self.decoder: FrameDecoder | None = None  # the stream's: replies reserve its memory
        self.uses = 0  # requests sent on the current stream
        self.unanswered = 0  # sends on the current stream since its last reply: echoes may follow

    def use(self, stream: Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(memory=stream.resources)

    async def drop(self) -> None:
        stream, self.stream, self.decoder = self.stream, None, None
        self.uses = self.unanswered = 0
        if stream is not None:
            await stream.reset()


class LibP2PKadMessenger:
    """Implements ``network.api.KadMessenger`` over a ``Host``."""

    def __init__(self, host: Host, protocols: Sequence[str] = (PROTOCOL_ID,), *, timeout: float = READ_MESSAGE_TIMEOUT):
        self._host = host
        self._protocols = list(protocols)
        self._timeout = timeout
        self._senders: dict[PeerId, _PeerSender] = {}
        host.on_disconnect(self._forget)

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        reply = await self._exchange(peer, message, expect_reply=True)
        assert reply is not None  # _exchange returns a reply when one is expected
        return reply

    async def send(self, peer: PeerInfo, message: Message) -> None:
        await self._exchange(peer, message, expect_reply=False)

    def _forget(self, peer: PeerId) -> None:
        self._senders.pop(peer, None)  # its stream died with the connection

    async def _exchange(self, peer: PeerInfo, message: Message, expect_reply: bool) -> Message | None:
        frame = encode_frame(message)
        sender = self._senders.setdefault(peer.peer_id, _PeerSender())
        try:
            with self._host.busy(peer.peer_id):  # the connection manager spares it meanwhile
                return await self._exchange_locked(sender, peer, frame, message, expect_reply)
        finally:
            # a peer we could not reach keeps no entry (the table stays bounded)
            idle = sender.stream is None and not sender.lock.statistics().tasks_waiting
            if idle and self._senders.get(peer.peer_id) is sender:
                del self._senders[peer.peer_id]

    async def _exchange_locked(
        self, sender: _PeerSender, peer: PeerInfo, frame: bytes, message: Message, expect_reply: bool
    ) -> Message | None:
        async with sender.lock:
            if not expect_reply and sender.unanswered >= MAX_UNANSWERED_SENDS:
                drain = Message(MessageType.FIND_NODE, key=peer.peer_id.to_bytes())
                try:
                    await self._on_stream(sender, encode_frame(drain), drain, expect_reply=True)
                except (TimeoutError, KadCodecError, *CONNECTION_ERRORS) as exc:
                    await sender.drop()  # the sends before it are not known to have arrived
                    raise NetworkError(f"{peer.peer_id}: no reply after {MAX_UNANSWERED_SENDS} sends: {exc!r}") from None
            for attempt in range(2):
                fresh = sender.stream is None
                if fresh:
                    sender.use(await self._host.new_stream(peer, self._protocols))
                try:
                    return await self._on_stream(sender, frame, message, expect_reply)
                except TimeoutError:
                    await sender.drop()
                    raise NetworkError(f"{peer.peer_id} did not answer {message.type.name} in {self._timeout} s") from None
                except KadCodecError as exc:
                    await sender.drop()
                    raise NetworkError(f"{peer.peer_id} sent a bad reply to {message.type.name}: {exc}") from None
                except CONNECTION_ERRORS as exc:
                    await sender.drop()
                    if fresh or attempt:
                        raise NetworkError(
                            f"{peer.peer_id}: stream failed during {message.type.name}: {type(exc).__name__}"
                        ) from None
                    log.debug("reused stream to %s failed (%s); retrying on a new one", peer.peer_id, exc)
        raise AssertionError("unreachable")

    async def _on_stream(self, sender: _PeerSender, frame: bytes, message: Message, expect_reply: bool) -> Message | None:
        stream, decoder = sender.stream, sender.decoder
        assert stream is not None and decoder is not None
        with anyio.fail_after(self._timeout):
            await stream.send(frame)
            sender.uses += 1
            if not expect_reply:
                sender.unanswered += 1
                return None
            while True:
                while (reply := decoder.next_message()) is None:
                    decoder.receive_data(await stream.receive())
                if reply.type == MessageType.ADD_PROVIDER and sender.unanswered and message.type != MessageType.ADD_PROVIDER:
                    sender.unanswered -= 1  # the echo of an earlier send
                    continue
                break
            # Echoes precede the reply on the stream: none of an earlier send can follow.
            sender.unanswered = 0
        if reply.type != message.type:
            raise KadCodecError(f"reply of type {reply.type.name} to a {message.type.name}")
        return reply
