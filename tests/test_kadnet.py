"""Kademlia over libp2p between two of our hosts: the messenger (one reused stream
per peer) and the server (several requests per stream, resets, idle timeout, rate
limit), with a small request handler of the test's own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import pytest

from dhtstore import varint
from dhtstore.amino import LAN_PROTOCOL_ID, MAX_MESSAGE_SIZE, PROTOCOL_ID
from dhtstore.crypto.keys import PrivateKey
from dhtstore.errors import NetworkError
from dhtstore.network import kadmessenger
from dhtstore.network.api import KadMessenger, Stream
from dhtstore.network.host import Host
from dhtstore.network.kadcodec import FrameDecoder, encode_frame
from dhtstore.network.kadmessenger import LibP2PKadMessenger
from dhtstore.network.limits import PeerRateLimiter
from dhtstore.server.api import InvalidRequest, RequestHandler
from dhtstore.server.kadserver import KadServer
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = pytest.mark.anyio


@dataclass
class Handler(RequestHandler):
    """Answers FIND_NODE with itself, refuses GET_VALUE, swallows ADD_PROVIDER,
    sleeps on PING when told to."""

    host: Host
    seen: list[Message] = field(default_factory=list)
    sleep: float = 0.0

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        self.seen.append(request)
        if request.type is MessageType.GET_VALUE:
            raise InvalidRequest("no values here")
        if request.type is MessageType.ADD_PROVIDER:
            return None
        if request.type is MessageType.PING:
            await anyio.sleep(self.sleep)
            return Message(MessageType.PING)
        if request.type is MessageType.PUT_VALUE:
            return Message(MessageType.FIND_NODE)  # wrong type on purpose
        addrs = tuple(a.to_bytes() for a in self.host.listen_addrs)
        return Message(request.type, key=request.key, closer_peers=(PeerInfo(self.host.peer_id, addrs),))


@dataclass
class Pair:
    client: Host
    server: Host
    handler: Handler
    kad: KadServer
    messenger: LibP2PKadMessenger

    @property
    def target(self) -> PeerInfo:
        return PeerInfo(self.server.peer_id, tuple(a.to_bytes() for a in self.server.listen_addrs))


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server, Host(PrivateKey.generate()) as client:
        handler = Handler(server)
        kad = KadServer(server, handler, idle_timeout=0.5)
        kad.start()
        yield Pair(client, server, handler, kad, LibP2PKadMessenger(client, timeout=2.0))


async def test_messenger_is_a_kad_messenger(pair: Pair) -> None:
    assert isinstance(pair.messenger, KadMessenger)


async def test_several_requests_share_one_stream(pair: Pair) -> None:
    for i in range(5):
        reply = await pair.messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"k%d" % i))
        assert reply.key == b"k%d" % i
        assert reply.closer_peers[0].peer_id == pair.server.peer_id
    assert pair.kad.stats["streams"] == 1 and pair.kad.stats["replies"] == 5


async def test_send_does_not_wait_for_a_reply_and_keeps_the_stream(pair: Pair) -> None:
    await pair.messenger.send(pair.target, Message(MessageType.ADD_PROVIDER, key=b"mh"))
    reply = await pair.messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"x"))
    assert reply.key == b"x"
    assert [m.type for m in pair.handler.seen] == [MessageType.ADD_PROVIDER, MessageType.FIND_NODE]
    assert pair.kad.stats["streams"] == 1


PY_STYLE_KAD = "/test/echoing-kad/1.0.0"


@dataclass
class EchoingServer:
    """A kad server that, as py-libp2p 0.8.1 does (ipfs/specs: ADD_PROVIDER "responds by
    echoing the request"; go answers nothing), echoes each ADD_PROVIDER on the stream,
    and answers any other request with its type and key."""

    echo: bool = True
    seen: list[Message] = field(default_factory=list)
    streams: int = 0

    async def __call__(self, stream: Stream) -> None:
        self.streams += 1
        decoder = FrameDecoder()
        try:
            while data := await stream.receive():
                decoder.receive_data(data)
                while (request := decoder.next_message()) is not None:
                    self.seen.append(request)
                    if request.type is not MessageType.ADD_PROVIDER:
                        await stream.send(encode_frame(Message(request.type, key=request.key)))
                    elif self.echo:
                        await stream.send(encode_frame(request))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


async def test_echoes_of_add_provider_are_not_taken_for_the_next_reply(pair: Pair) -> None:
    server = EchoingServer()
    pair.server.set_handler(PY_STYLE_KAD, server)
    messenger = LibP2PKadMessenger(pair.client, [PY_STYLE_KAD], timeout=2.0)
    for i in range(3):
        await messenger.send(pair.target, Message(MessageType.ADD_PROVIDER, key=b"mh%d" % i))
    reply = await messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"x"))
    assert reply.type is MessageType.FIND_NODE and reply.key == b"x"
    await messenger.send(pair.target, Message(MessageType.ADD_PROVIDER, key=b"mh3"))
    reply = await messenger.request(pair.target, Message(MessageType.GET_PROVIDERS, key=b"y"))
    assert reply.type is MessageType.GET_PROVIDERS and reply.key == b"y"
    reply = await messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"z"))
    assert reply.key == b"z"
    assert server.streams == 1


@pytest.mark.parametrize("echo", [False, True], ids=["go-style", "echoing"])
async def test_many_unanswered_sends_are_followed_by_a_round_trip_on_the_same_stream(
    pair: Pair, echo: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kadmessenger, "MAX_UNANSWERED_SENDS", 3)
    server = EchoingServer(echo)
    pair.server.set_handler(PY_STYLE_KAD, server)
    messenger = LibP2PKadMessenger(pair.client, [PY_STYLE_KAD], timeout=2.0)
    for i in range(7):
        await messenger.send(pair.target, Message(MessageType.ADD_PROVIDER, key=b"mh%d" % i))
    reply = await messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"x"))
    assert reply.type is MessageType.FIND_NODE and reply.key == b"x"
    own = pair.server.peer_id.to_bytes()
    # One stream, in order: a FIND_NODE for the server itself after every 3 sends, so a
    # reply on the stream always follows every send before it.
    assert [(m.type, m.key) for m in server.seen] == [
        *((MessageType.ADD_PROVIDER, b"mh%d" % i) for i in range(3)), (MessageType.FIND_NODE, own),
        *((MessageType.ADD_PROVIDER, b"mh%d" % i) for i in range(3, 6)), (MessageType.FIND_NODE, own),
        (MessageType.ADD_PROVIDER, b"mh6"), (MessageType.FIND_NODE, b"x"),
    ]  # fmt: skip
    assert server.streams == 1


async def test_an_invalid_request_resets_the_stream_and_the_next_request_works(pair: Pair) -> None:
    with pytest.raises(NetworkError):
        await pair.messenger.request(pair.target, Message(MessageType.GET_VALUE, key=b"/x/y"))
    assert pair.kad.stats["invalid_requests"] == 1
    reply = await pair.messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"x"))
    assert reply.key == b"x"
    assert pair.kad.stats["streams"] == 2


async def test_a_reply_of_the_wrong_type_is_an_error(pair: Pair) -> None:
    with pytest.raises(NetworkError, match="bad reply"):
        await pair.messenger.request(pair.target, Message(MessageType.PUT_VALUE, key=b"k"))


async def test_a_slow_reply_times_out(pair: Pair) -> None:
    pair.handler.sleep = 5.0
    messenger = LibP2PKadMessenger(pair.client, timeout=0.2)
    with pytest.raises(NetworkError, match="did not answer"):
        await messenger.request(pair.target, Message(MessageType.PING))


async def test_a_reused_stream_that_died_is_replaced_once(pair: Pair) -> None:
    await pair.messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"a"))
    with anyio.fail_after(5):  # the server resets the idle stream after 0.5 s
        while pair.kad.stats["idle_streams_reset"] == 0:
            await anyio.sleep(0.05)
    reply = await pair.messenger.request(pair.target, Message(MessageType.FIND_NODE, key=b"b"))
    assert reply.key == b"b"


async def raw_stream(pair: Pair) -> Stream:
    return await pair.client.new_stream(pair.target, [PROTOCOL_ID])


@pytest.mark.parametrize(
    "garbage",
    [varint.encode(MAX_MESSAGE_SIZE + 1), b"\x80\x00", varint.encode(3) + b"\xff\xff\xff"],
    ids=["oversized-prefix", "non-minimal-prefix", "bad-protobuf"],
)
async def test_a_malformed_frame_resets_the_stream_without_an_answer(
    pair: Pair, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stream = await raw_stream(pair)
    await stream.send(garbage)
    with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
        await stream.receive()
    assert pair.kad.stats["malformed_requests"] == 1
    assert pair.handler.seen == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_requests_pipelined_on_one_stream_are_answered_in_order(pair: Pair) -> None:
    stream = await raw_stream(pair)
    await stream.send(b"".join(encode_frame(Message(MessageType.FIND_NODE, key=b"%d" % i)) for i in range(20)))
    decoder = FrameDecoder()
    keys: list[bytes] = []
    with anyio.fail_after(5):
        while len(keys) < 20:
            decoder.receive_data(await stream.receive())
            while (m := decoder.next_message()) is not None:
                keys.append(m.key)
    assert keys == [b"%d" % i for i in range(20)]


async def test_a_flooding_peer_is_throttled_while_another_is_served() -> None:
    async with (
        Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server,
        Host(PrivateKey.generate()) as flooder,
        Host(PrivateKey.generate()) as polite,
    ):
        kad = KadServer(server, Handler(server), limiter=PeerRateLimiter(rate=100, burst=10))
        kad.start()
        target = PeerInfo(server.peer_id, tuple(a.to_bytes() for a in server.listen_addrs))
        flood = await flooder.new_stream(target, [PROTOCOL_ID])
        count = 200  # two seconds' worth at 100/s
        await flood.send(b"".join(encode_frame(Message(MessageType.FIND_NODE, key=b"f")) for _ in range(count)))
        with anyio.fail_after(5):
            while kad.stats["requests"] < 20:  # the flood is being served, and throttled
                await anyio.sleep(0.01)
        reply = await LibP2PKadMessenger(polite).request(target, Message(MessageType.FIND_NODE, key=b"p"))
        assert reply.key == b"p"
        # the polite peer was answered while most of the flood still waited its turn
        assert kad.stats["replies"] < count
        assert kad.limiter.throttled > 0


async def test_the_lan_protocol_and_stopping_the_server() -> None:
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server, Host(PrivateKey.generate()) as client:
        kad = KadServer(server, Handler(server), protocols=[LAN_PROTOCOL_ID])
        kad.start()
        assert LAN_PROTOCOL_ID in server.protocols and PROTOCOL_ID not in server.protocols
        target = PeerInfo(server.peer_id, tuple(a.to_bytes() for a in server.listen_addrs))
        lan = LibP2PKadMessenger(client, [LAN_PROTOCOL_ID])
        assert (await lan.request(target, Message(MessageType.FIND_NODE, key=b"z"))).key == b"z"
        with pytest.raises(NetworkError):
            await LibP2PKadMessenger(client).request(target, Message(MessageType.FIND_NODE, key=b"z"))
        kad.stop()
        assert LAN_PROTOCOL_ID not in server.protocols
        with pytest.raises(NetworkError):
            await LibP2PKadMessenger(client, [LAN_PROTOCOL_ID]).request(target, Message(MessageType.FIND_NODE))


async def test_request_to_an_unreachable_peer_is_a_network_error(pair: Pair) -> None:
    nobody = PeerInfo(PrivateKey.generate().peer_id(), (pair.server.listen_addrs[0].to_bytes(),))
    with pytest.raises(NetworkError):
        await pair.messenger.request(nobody, Message(MessageType.FIND_NODE))


def test_rate_limiter_buckets_are_per_peer() -> None:
    now = [0.0]
    limiter = PeerRateLimiter(rate=10, burst=2, clock=lambda: now[0])
    assert [limiter.delay("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]
    assert limiter.delay("b") == 0.0
    now[0] = 1.0
    assert limiter.delay("a") == 0.0  # refilled


async def test_unreachable_peers_leave_no_sender_behind(pair: Pair) -> None:
    for _ in range(3):
        with pytest.raises(NetworkError):
            await pair.messenger.request(PeerInfo(PrivateKey.generate().peer_id()), Message(MessageType.FIND_NODE))
    await pair.messenger.request(pair.target, Message(MessageType.FIND_NODE))
    assert list(pair.messenger._senders) == [pair.server.peer_id]
