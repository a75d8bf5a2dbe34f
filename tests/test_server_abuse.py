"""Bad input and abuse against a real dhtstore node over loopback TCP (issue 5).

A server-mode ``Node`` on its own SQLite store; the hostile peers are plain hosts
that write Kademlia frames on raw streams, so a refusal is seen as what the wire
shows: the stream reset, with no answer. Every test also checks that nothing was
logged at WARNING or above and that no traceback was logged at all.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from dhtstore import multihash
from dhtstore.amino import MAX_IPNS_RECORD_SIZE, PROTOCOL_ID
from dhtstore.crypto.keys import PrivateKey
from dhtstore.network.connection import Stream
from dhtstore.network.host import Host
from dhtstore.network.kadcodec import FrameDecoder, encode_frame
from dhtstore.network.kadmessenger import LibP2PKadMessenger
from dhtstore.node import Node
from dhtstore.records import ipns
from dhtstore.types import Message, MessageType, PeerInfo, Record

pytestmark = pytest.mark.anyio

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
WAIT = 10.0  # seconds: bound on every wait for the node


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """At the level `dhtstore run` logs by default (INFO): no warning, no traceback."""
    caplog.set_level(logging.INFO)
    yield
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info or r.stack_info]
    assert not loud, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in loud]
    assert "Traceback" not in caplog.text


@pytest.fixture
async def node(sqlite_store_url: str, loopback_options: Callable[..., Any]) -> AsyncIterator[Node]:
    async with Node.start(loopback_options(sqlite_store_url)) as started:
        yield started


@pytest.fixture
async def client() -> AsyncIterator[Host]:
    async with Host(PrivateKey.generate()) as host:
        yield host


def target(node: Node) -> PeerInfo:
    return PeerInfo(node.peer_id, tuple(a.to_bytes() for a in node.host.listen_addrs))


def eol(hours: float = 24) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)


async def ask(client: Host, node: Node, request: Message) -> Message | None:
    """Send one request on a fresh stream: the reply, or None when the node reset the
    stream without answering."""
    stream = await client.new_stream(target(node), [PROTOCOL_ID])
    decoder = FrameDecoder()
    await stream.send(encode_frame(request))
    with anyio.fail_after(WAIT):
        try:
            while (reply := decoder.next_message()) is None:
                decoder.receive_data(await stream.receive())
        except anyio.BrokenResourceError:
            return None
    await stream.aclose()
    return reply


def put(key: bytes, value: bytes, record_key: bytes | None = None) -> Message:
    return Message(MessageType.PUT_VALUE, key=key, record=Record(record_key if record_key is not None else key, value))


async def stored_value(client: Host, node: Node, key: bytes) -> bytes | None:
    reply = await ask(client, node, Message(MessageType.GET_VALUE, key=key))
    assert reply is not None
    return reply.record.value if reply.record is not None else None


# -- ADD_PROVIDER -------------------------------------------------------------------


async def test_a_stream_reset_by_the_client_is_a_stream_error_not_a_handler_failure(node: Node, client: Host) -> None:
    me = PeerInfo(client.peer_id, (ADDR,))
    errors = node.host.stats["stream_errors"]
    stream = await client.new_stream(target(node), [PROTOCOL_ID])
    key = multihash.from_cid(CID)
    await stream.send(encode_frame(Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))))
    await stream.reset()
    with anyio.fail_after(WAIT):
        while node.host.stats["stream_errors"] == errors:
            await anyio.sleep(0.01)
    assert node.host.stats["handler_errors"] == 0  # the autouse fixture: nothing logged at WARNING


async def test_a_run_of_add_providers_shares_commits_and_the_next_reply_acknowledges_them(node: Node, client: Host) -> None:
    """A stream's ADD_PROVIDERs are handled together (``server.kadserver._PipelinedWrites``):
    a run of them shares transactions, and the reply after them comes only once every
    one of them is stored; an invalid one in a run resets the stream."""
    me = PeerInfo(client.peer_id, (ADDR,))
    keys = [multihash.Multihash(multihash.SHA2_256, bytes([i]) * 32).to_bytes() for i in range(50)]
    transactions = node.providers.counters["transactions"]
    stream = await client.new_stream(target(node), [PROTOCOL_ID])
    frames = [encode_frame(Message(MessageType.ADD_PROVIDER, key=k, provider_peers=(me,))) for k in keys]
    await stream.send(b"".join(frames) + encode_frame(Message(MessageType.PING)))
    decoder = FrameDecoder()
    with anyio.fail_after(WAIT):
        while (reply := decoder.next_message()) is None:
            decoder.receive_data(await stream.receive())
    assert reply.type is MessageType.PING
    stored = [k for k in keys if await node.providers.get_providers(k)]  # read right after the reply
    assert len(stored) == len(keys), "the reply came before every ADD_PROVIDER before it was stored"
    assert node.providers.counters["transactions"] - transactions < len(keys) // 2, "one transaction per record"

    invalid = Message(MessageType.ADD_PROVIDER, key=b"not a multihash", provider_peers=(me,))
    await stream.send(b"".join(frames[:25] + [encode_frame(invalid)] + frames[25:]))
    with anyio.fail_after(WAIT), pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
        for _ in range(100):
            await stream.receive()
    assert node.kadserver.stats["invalid_requests"] == 1


async def test_add_provider_naming_another_peer_is_ignored_and_counted(node: Node, client: Host) -> None:
    key = multihash.from_cid(CID)
    someone_else = PeerInfo(PrivateKey.generate().peer_id(), (ADDR,))
    me = PeerInfo(client.peer_id, (ADDR,))
    ignored = ("ADD_PROVIDER", "foreign_provider_ignored")
    # Only another peer named: nothing valid is left, so the stream is reset (go PR #1065).
    alone = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(someone_else,))
    assert await ask(client, node, alone) is None
    assert node.handler.counters[ignored] == 1

    # Another peer beside the sender: that entry is dropped, the sender's is stored, and
    # the stream stays open (ADD_PROVIDER gets no reply; the next request is answered).
    stream = await client.new_stream(target(node), [PROTOCOL_ID])
    mixed = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(someone_else, me))
    await stream.send(encode_frame(mixed) + encode_frame(Message(MessageType.GET_PROVIDERS, key=key)))
    decoder = FrameDecoder()
    with anyio.fail_after(WAIT):
        while (reply := decoder.next_message()) is None:
            decoder.receive_data(await stream.receive())
    await stream.aclose()
    assert reply.type is MessageType.GET_PROVIDERS
    assert [p.peer_id for p in reply.provider_peers] == [client.peer_id]
    assert node.handler.counters[ignored] == 2
    assert [r.provider.peer_id for r in await node.providers.get_providers(key)] == [client.peer_id]


async def test_bad_keys_reset_the_stream_and_store_nothing(node: Node, client: Host) -> None:
    me = PeerInfo(client.peer_id, (ADDR,))
    too_long = bytes([0x12, 79]) + bytes(79)  # a well-formed multihash of 81 bytes: over go's 80
    refused = [
        Message(MessageType.ADD_PROVIDER, key=too_long, provider_peers=(me,)),
        Message(MessageType.ADD_PROVIDER, key=b"", provider_peers=(me,)),
        Message(MessageType.ADD_PROVIDER, key=b"not a multihash", provider_peers=(me,)),
        Message(MessageType.ADD_PROVIDER, key=multihash.from_cid(CID), provider_peers=(PeerInfo(client.peer_id),)),
        Message(MessageType.GET_PROVIDERS, key=too_long),
        Message(MessageType.FIND_NODE, key=b""),
        Message(MessageType.PUT_VALUE, key=b"/pk/x"),  # no record
    ]
    for request in refused:
        assert await ask(client, node, request) is None, request
    assert await node.providers.get_providers(multihash.from_cid(CID)) == []
    assert sum(n for (_, outcome), n in node.handler.counters.items() if outcome == "invalid") == len(refused)


# -- PUT_VALUE ----------------------------------------------------------------------


async def test_forged_and_invalid_records_are_refused_and_the_stored_record_is_kept(node: Node, client: Host) -> None:
    owner, intruder, other = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    key = ipns.routing_key(owner.peer_id())
    good = ipns.create(owner, b"/ipfs/good", 5, eol())
    assert await ask(client, node, put(key, good)) == put(key, good)  # stored and echoed
    invalid_before = node.handler.counters[("PUT_VALUE", "invalid")]

    tampered = ipns.parse(ipns.create(owner, b"/ipfs/evil", 9, eol(), v1_compatible=False)).pb
    tampered.data = ipns.parse(ipns.create(intruder, b"/ipfs/evil", 9, eol(), v1_compatible=False)).pb.data
    over_limit = ipns.parse(ipns.create(owner, b"/ipfs/big", 9, eol(), v1_compatible=False)).pb
    fields = ipns.decode_dag_cbor(over_limit.data)
    over_limit.data = ipns.encode_dag_cbor({**fields, "_pad": b"x" * MAX_IPNS_RECORD_SIZE})
    over_limit.signatureV2 = owner.sign(ipns.SIGNATURE_V2_PREFIX + over_limit.data)
    other_key = ipns.routing_key(other.peer_id())
    refused = {
        "signed by another key": put(key, ipns.create(intruder, b"/ipfs/evil", 9, eol())),
        "data not what was signed": put(key, tampered.SerializeToString()),
        "over the size limit": put(key, over_limit.SerializeToString()),
        "message key differs from record key": put(key, ipns.create(other, b"/ipfs/x", 9, eol()), other_key),
        "expired": put(key, ipns.create(owner, b"/ipfs/old", 9, eol(hours=-1))),
        "older than the stored one": put(key, ipns.create(owner, b"/ipfs/older", 4, eol())),
        "unknown namespace": put(b"/test/" + owner.peer_id().to_bytes(), b"anything"),
        "no namespace": put(b"no-namespace", b"anything"),
    }
    for reason, request in refused.items():
        assert await ask(client, node, request) is None, f"{reason}: answered, not reset"

    assert node.handler.counters[("PUT_VALUE", "invalid")] - invalid_before == len(refused)
    assert await stored_value(client, node, key) == good
    assert await stored_value(client, node, other_key) is None  # the mismatched put stored nothing
    assert await node.values.count() == 1
    # the refusals reset their streams only: the same peer's next valid put is taken
    better = ipns.create(owner, b"/ipfs/better", 6, eol())
    assert await ask(client, node, put(key, better)) == put(key, better)
    assert await stored_value(client, node, key) == better


async def test_malformed_frames_reset_the_stream_and_are_counted(node: Node, client: Host) -> None:
    garbage = [b"\x05\xff\xff\xff\xff\xff", b"\xff\xff\xff\xff\x7f", encode_frame(Message(MessageType.PING))[:1] + b"\x08\x63"]
    for frame in garbage:
        stream = await client.new_stream(target(node), [PROTOCOL_ID])
        await stream.send(frame)
        with anyio.fail_after(WAIT), pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
    assert node.kadserver.stats["malformed_requests"] + node.handler.counters[("unknown", "invalid")] == len(garbage)
    assert await ask(client, node, Message(MessageType.PING)) == Message(MessageType.PING)


# -- flooding -------------------------------------------------------------------------

FLOOD_RATE = 1000  # requests per second sent by the flooding peer
FLOOD_SECONDS = 2.0
FLOOD_STREAMS = 4  # the flood is spread over streams: the limit is per peer, not per stream
POLITE_REQUESTS = 20


@pytest.mark.slow
async def test_a_flooding_peer_is_throttled_while_another_peer_is_answered(node: Node) -> None:
    limiter = node.kadserver.limiter
    request = encode_frame(Message(MessageType.FIND_NODE, key=b"flood"))
    sent = answered = 0
    async with Host(PrivateKey.generate()) as flooder, Host(PrivateKey.generate()) as polite:
        streams = [await flooder.new_stream(target(node), [PROTOCOL_ID]) for _ in range(FLOOD_STREAMS)]

        async def count_replies(stream: Stream) -> None:
            nonlocal answered
            decoder = FrameDecoder()
            try:
                while True:
                    decoder.receive_data(await stream.receive())
                    while decoder.next_message() is not None:
                        answered += 1
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return

        async def flood() -> None:
            nonlocal sent
            tick = 0.02
            per_tick = int(FLOOD_RATE * tick)
            for i in range(int(FLOOD_SECONDS / tick)):  # paced at FLOOD_RATE, a burst per tick
                await streams[i % FLOOD_STREAMS].send(request * per_tick)
                sent += per_tick
                await anyio.sleep_until(started + (i + 1) * tick)

        async with anyio.create_task_group() as tg:
            started = anyio.current_time()
            for stream in streams:
                tg.start_soon(count_replies, stream)
            tg.start_soon(flood)
            with anyio.fail_after(WAIT):
                while limiter.throttled == 0:  # the flood has used up its burst
                    await anyio.sleep(0.01)
            messenger = LibP2PKadMessenger(polite)
            polite_answers = [
                await messenger.request(target(node), Message(MessageType.FIND_NODE, key=b"polite %d" % i))
                for i in range(POLITE_REQUESTS)
            ]
            flood_answered_meanwhile = answered
            await anyio.sleep_until(started + FLOOD_SECONDS)
            elapsed = anyio.current_time() - started
            flood_answered = answered
            tg.cancel_scope.cancel()
        for stream in streams:
            await stream.reset()

    assert [m.key for m in polite_answers] == [b"polite %d" % i for i in range(POLITE_REQUESTS)]
    # the polite peer was answered in full while the flood's backlog was still queued
    assert flood_answered_meanwhile < sent
    # the flood got no more than its token bucket allows, and was still served
    allowed = limiter.burst + limiter.rate * elapsed
    assert flood_answered <= allowed * 1.05 + 10, (flood_answered, allowed)
    assert flood_answered >= limiter.rate * 0.5
    assert sent >= 1.5 * allowed  # it did flood: far more was sent than the limit lets through
    assert limiter.throttled > 0
