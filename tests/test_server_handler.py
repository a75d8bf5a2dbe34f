"""The Kademlia request handler: go-libp2p-kad-dht's handlers.go rules, with the real
stores and the Amino record validator."""

import datetime
import random

import pytest

from dhtstore import amino
from dhtstore.crypto.keys import PrivateKey
from dhtstore.kadkey import Key
from dhtstore.peerid import PeerId
from dhtstore.providerstore.api import ProviderQuotas
from dhtstore.providerstore.memory import MemoryProviderStore
from dhtstore.records import ipns, pk
from dhtstore.records.memory import MemoryValueStore
from dhtstore.records.validators import NamespacedValidator
from dhtstore.routingtable.kbuckets import KBucketTable
from dhtstore.server.api import InvalidRequest, RequestHandler
from dhtstore.server.handler import KademliaHandler
from dhtstore.types import Message, MessageType, PeerInfo, Record

pytestmark = pytest.mark.anyio

PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
MH = b"\x12\x20" + bytes(range(32))
rng = random.Random(41)


def ip4(last: int) -> bytes:
    return bytes([0x04, 10, 1, 2, last & 0xFF, 0x06, 0x0F, 0xA1])


def new_peer(last: int = 1) -> PeerInfo:
    return PeerInfo(PeerId(PREFIX + rng.randbytes(32)), (ip4(last),))


class Node:
    def __init__(self, table_size: int = 60):
        self.me = new_peer(254)
        self.table = KBucketTable(Key.for_peer(self.me.peer_id))
        self.known = [new_peer(i) for i in range(table_size)]
        for p in self.known:
            self.table.add(p, 0.0)
        self.address_book: dict[PeerId, tuple[bytes, ...]] = {}
        self.validator = NamespacedValidator()
        self.values = MemoryValueStore(self.validator)
        self.providers = MemoryProviderStore()
        self.handler = KademliaHandler(
            self.me,
            self.table,
            self.providers,
            self.values,
            self.validator,
            address_book=lambda p: self.address_book.get(p, ()),
            rng=random.Random(1),
        )


@pytest.fixture
def node() -> Node:
    return Node()


async def ask(handler: KademliaHandler, sender: PeerInfo, request: Message) -> Message:
    """The handler's reply to a request that has one."""
    reply = await handler.handle(sender, request)
    assert reply is not None
    return reply


async def test_implements_the_api(node: Node) -> None:
    assert isinstance(node.handler, RequestHandler)


async def test_find_node_returns_k_closest_without_us_or_the_requester(node: Node) -> None:
    requester = node.known[0]
    reply = await ask(node.handler, requester, Message(MessageType.FIND_NODE, key=b"some key"))
    ids = [p.peer_id for p in reply.closer_peers]
    assert len(ids) == amino.BUCKET_SIZE
    assert requester.peer_id not in ids and node.me.peer_id not in ids
    expected = [p.peer_id for p in node.table.local_closest_peers(Key.hash(b"some key"), 21) if p != requester][:20]
    assert ids == expected



async def test_find_node_puts_the_target_first_even_when_it_is_the_requester_or_us(node: Node) -> None:
    requester = node.known[0]
    reply = await ask(node.handler, requester, Message(MessageType.FIND_NODE, key=requester.peer_id.to_bytes()))
    ids = [p.peer_id for p in reply.closer_peers]
    assert ids[0] == requester.peer_id and ids.count(requester.peer_id) == 1 and len(ids) == 21
    reply = await ask(node.handler, requester, Message(MessageType.FIND_NODE, key=node.me.peer_id.to_bytes()))
    assert reply.closer_peers[0] == node.me
    in_table = node.known[7]
    reply = await ask(node.handler, requester, Message(MessageType.FIND_NODE, key=in_table.peer_id.to_bytes()))
    assert reply.closer_peers[0] == in_table and len(reply.closer_peers) == 20


async def test_find_node_includes_a_known_target_even_outside_the_table(node: Node) -> None:
    outsider = new_peer(77)
    node.address_book[outsider.peer_id] = outsider.addrs
    reply = await ask(node.handler, node.known[1], Message(MessageType.FIND_NODE, key=outsider.peer_id.to_bytes()))
    assert reply.closer_peers[0] == outsider
    unknown = new_peer(78)
    reply = await ask(node.handler, node.known[1], Message(MessageType.FIND_NODE, key=unknown.peer_id.to_bytes()))
    assert unknown.peer_id not in [p.peer_id for p in reply.closer_peers]


async def test_find_node_with_empty_key_is_invalid(node: Node) -> None:
    with pytest.raises(InvalidRequest):
        await node.handler.handle(node.known[0], Message(MessageType.FIND_NODE))
    assert node.handler.counters[("FIND_NODE", "invalid")] == 1


def pk_record() -> tuple[bytes, bytes]:
    key = PrivateKey.generate()
    return pk.routing_key(key.peer_id()), key.public_key().to_protobuf()


async def test_put_value_validates_stores_and_echoes(node: Node) -> None:
    key, value = pk_record()
    request = Message(MessageType.PUT_VALUE, key=key, record=Record(key, value), closer_peers=(node.known[3],))
    reply = await ask(node.handler, node.known[0], request)
    assert reply == Message(MessageType.PUT_VALUE, key=key, record=Record(key, value))
    got = await ask(node.handler, node.known[0], Message(MessageType.GET_VALUE, key=key))
    assert got.record is not None and got.record.value == value and got.record.time_received  # stamped by the receiver
    assert len(got.closer_peers) == 20
    assert node.handler.counters[("PUT_VALUE", "ok")] == 1


@pytest.mark.parametrize(
    "case",
    ["keys differ", "no record", "forged", "unknown namespace", "oversized ipns"],
)
async def test_put_value_refusals_leave_the_store_untouched(node: Node, case: str) -> None:
    key, value = pk_record()
    other_key, _ = pk_record()
    request = {
        "keys differ": Message(MessageType.PUT_VALUE, key=other_key, record=Record(key, value)),
        "no record": Message(MessageType.PUT_VALUE, key=key),
        "forged": Message(MessageType.PUT_VALUE, key=other_key, record=Record(other_key, value)),
        "unknown namespace": Message(MessageType.PUT_VALUE, key=b"/foo/bar", record=Record(b"/foo/bar", b"x")),
        "oversized ipns": Message(
            MessageType.PUT_VALUE, key=b"/ipns/" + PREFIX, record=Record(b"/ipns/" + PREFIX, b"\x00" * 20_000)
        ),
    }[case]
    with pytest.raises(InvalidRequest):
        await node.handler.handle(node.known[0], request)
    assert await node.values.count() == 0
    assert node.handler.counters[("PUT_VALUE", "invalid")] == 1


async def test_put_value_refuses_an_older_ipns_record(node: Node) -> None:
    key = PrivateKey.generate()
    routing_key = ipns.routing_key(key.peer_id())
    eol = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    newer, older = ipns.create(key, b"/ipfs/new", 2, eol), ipns.create(key, b"/ipfs/old", 1, eol)
    def put(value: bytes) -> Message:
        return Message(MessageType.PUT_VALUE, key=routing_key, record=Record(routing_key, value))

    await node.handler.handle(node.known[0], put(newer))
    with pytest.raises(InvalidRequest):
        await node.handler.handle(node.known[0], put(older))
    stored = await node.values.get(routing_key)
    assert stored is not None and stored.value == newer


async def test_get_value_of_an_unknown_key_gives_closer_peers_only(node: Node) -> None:
    reply = await ask(node.handler, node.known[0], Message(MessageType.GET_VALUE, key=b"/pk/nothing"))
    assert reply.record is None and len(reply.closer_peers) == 20


async def test_add_provider_keeps_only_the_senders_entry_with_addresses(node: Node) -> None:
    sender, other = node.known[5], node.known[6]
    request = Message(MessageType.ADD_PROVIDER, key=MH, provider_peers=(other, sender))
    assert await node.handler.handle(sender, request) is None  # no reply, as go
    records = await node.providers.get_providers(MH)
    assert [r.provider for r in records] == [sender]
    assert node.handler.counters[("ADD_PROVIDER", "foreign_provider_ignored")] == 1


@pytest.mark.parametrize(
    "key, entries",
    [
        (MH, "other"),  # only another peer named
        (MH, "no addrs"),  # the sender without addresses
        (b"\x12\x20" + b"\x01" * 79, "sender"),  # over 80 bytes
        (b"", "sender"),
        (b"\xff\xff\xff", "sender"),  # not a multihash
    ],
)
async def test_add_provider_refusals(node: Node, key: bytes, entries: str) -> None:
    sender = node.known[5]
    provider_peers = {
        "other": (node.known[6],),
        "no addrs": (PeerInfo(sender.peer_id),),
        "sender": (sender,),
    }[entries]
    with pytest.raises(InvalidRequest):
        await node.handler.handle(sender, Message(MessageType.ADD_PROVIDER, key=key, provider_peers=provider_peers))
    assert (await node.providers.stats()).records == 0


async def test_a_run_of_add_providers_stores_what_comes_before_the_first_invalid_one(node: Node) -> None:
    sender = node.known[5]
    keys = [b"\x12\x20" + bytes([i]) * 32 for i in range(6)]
    run = [Message(MessageType.ADD_PROVIDER, key=k, provider_peers=(sender,)) for k in keys]
    run[3] = Message(MessageType.ADD_PROVIDER, key=b"\xff\xff\xff", provider_peers=(sender,))
    with pytest.raises(InvalidRequest, match="ADD_PROVIDER key"):
        await node.handler.add_providers(sender, run)
    assert [bool(await node.providers.get_providers(k)) for k in keys] == [True, True, True, False, False, False]
    assert node.handler.counters[("ADD_PROVIDER", "ok")] == 3
    assert node.handler.counters[("ADD_PROVIDER", "invalid")] == 1

    await node.handler.add_providers(sender, run[4:])
    assert all([await node.providers.get_providers(k) for k in keys[4:]])


async def test_get_providers_returns_providers_and_closer_peers(node: Node) -> None:
    for p in node.known[:5]:
        await node.handler.handle(p, Message(MessageType.ADD_PROVIDER, key=MH, provider_peers=(p,)))
    reply = await ask(node.handler, node.known[9], Message(MessageType.GET_PROVIDERS, key=MH))
    assert {p.peer_id for p in reply.provider_peers} == {p.peer_id for p in node.known[:5]}
    assert len(reply.closer_peers) == 20 and node.known[9] not in reply.closer_peers


async def test_get_providers_is_shuffled_and_trimmed_to_the_message_limit() -> None:
    node = Node(table_size=25)
    node.handler.max_message_size = 20_000
    many = [new_peer(i) for i in range(400)]
    for p in many:
        await node.providers.add_provider(MH, p.peer_id, p.addrs)
    first = await ask(node.handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))
    second = await ask(node.handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))
    assert 100 < len(first.provider_peers) < 400
    assert [p.peer_id for p in first.provider_peers] != [p.peer_id for p in second.provider_peers]


@pytest.mark.parametrize("key", [b"", b"\x12\x20" + b"\x01" * 79, b"\xff\xff"])
async def test_get_providers_with_a_bad_key_is_invalid(node: Node, key: bytes) -> None:
    with pytest.raises(InvalidRequest):
        await node.handler.handle(node.known[0], Message(MessageType.GET_PROVIDERS, key=key))


async def test_ping_answers_and_everything_is_counted(node: Node) -> None:
    assert await node.handler.handle(node.known[0], Message(MessageType.PING)) == Message(MessageType.PING)
    with pytest.raises(InvalidRequest):
        await node.handler.handle(node.known[0], Message(9))  # type: ignore[arg-type]
    assert node.handler.counters[("PING", "ok")] == 1 and node.handler.counters[("unknown", "invalid")] == 1


async def test_a_trimmed_get_providers_reply_encodes_within_4_mib() -> None:
    from dhtstore.network.kadcodec import encode_message

    node = Node(table_size=40)
    node.providers.quotas = ProviderQuotas(per_key=16_000)  # more providers of one key than the default takes
    addrs = tuple(bytes([0x04, 10, 0, i, 1, 0x06, 0x0F, 0xA1]) + b"\xa5\x03" + bytes(22) for i in range(10))
    for _ in range(16_000):
        await node.providers.add_provider(MH, PeerId(PREFIX + rng.randbytes(32)), addrs)
    reply = await ask(node.handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))
    size = len(encode_message(reply))
    assert len(reply.provider_peers) < 16_000 and len(reply.closer_peers) == 20
    assert amino.MAX_MESSAGE_SIZE - 64 * 1024 < size <= amino.MAX_MESSAGE_SIZE


async def test_closer_peers_carry_the_address_books_addresses(node: Node) -> None:
    moved = node.table.local_closest_peers(Key.hash(b"k"), 1)[0]
    node.address_book[moved.peer_id] = (ip4(200),)
    requester = next(p for p in node.known if p.peer_id != moved.peer_id)
    reply = await ask(node.handler, requester, Message(MessageType.FIND_NODE, key=b"k"))
    assert reply.closer_peers[0] == PeerInfo(moved.peer_id, (ip4(200),))



async def test_our_provide_list_answers_get_providers_for_us(node: Node) -> None:
    listed = {MH}

    async def own_provides(key: bytes) -> bool:
        return key in listed

    handler = KademliaHandler(node.me, node.table, node.providers, node.values, node.validator, own_provides=own_provides)
    other = node.known[1]
    await node.providers.add_provider(MH, other.peer_id, other.addrs)
    await node.providers.add_provider(MH, node.me.peer_id, node.me.addrs)  # never listed twice
    reply = await ask(handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))
    assert [p.peer_id for p in reply.provider_peers] == [node.me.peer_id, other.peer_id]
    assert reply.provider_peers[0].addrs == node.me.addrs
    listed.clear()
    reply = await ask(handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))
    assert [p.peer_id for p in reply.provider_peers] == [other.peer_id]


@pytest.mark.parametrize("addr_len", [0, 8, 200, 20_000])
def test_the_cheap_size_bound_never_undercounts_a_provider_entry(addr_len: int) -> None:
    from dhtstore.network.kadcodec import encode_message
    from dhtstore.server.handler import _peer_size, _peer_size_bound

    for count in (0, 1, 7):
        info = PeerInfo(PeerId(PREFIX + rng.randbytes(32)), tuple(rng.randbytes(addr_len) for _ in range(count)))
        entry = len(encode_message(Message(MessageType.GET_PROVIDERS, provider_peers=(info,)))) - len(
            encode_message(Message(MessageType.GET_PROVIDERS))
        )
        assert _peer_size(info) >= entry and _peer_size_bound(info) >= _peer_size(info)


async def test_providers_that_fit_only_by_the_exact_count_are_all_sent() -> None:
    from dhtstore.server.handler import _FRAMING_MARGIN, _peer_size, _peer_size_bound

    node = Node(table_size=25)
    many = [new_peer(i) for i in range(50)]
    for p in many:
        await node.providers.add_provider(MH, p.peer_id, p.addrs)
    closer = (await ask(node.handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))).closer_peers
    exact = sum(map(_peer_size, (*closer, *many)))
    assert sum(map(_peer_size_bound, (*closer, *many))) > exact
    node.handler.max_message_size = exact + _FRAMING_MARGIN + len(MH)  # just room for all, counted exactly
    reply = await ask(node.handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))
    assert len(reply.provider_peers) == 50
    node.handler.max_message_size -= 1
    reply = await ask(node.handler, node.known[0], Message(MessageType.GET_PROVIDERS, key=MH))
    assert len(reply.provider_peers) == 49
