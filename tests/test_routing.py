"""The iterative lookup against hostile and failing peers, on a scripted network."""

import random

import anyio
import pytest

from dhtstore.errors import NetworkError
from dhtstore.kadkey import Key
from dhtstore.peerid import PeerId
from dhtstore.routing.api import NoPeersError
from dhtstore.routing.query import PeerState, QueryState
from dhtstore.routing.router import KademliaRouter
from dhtstore.routingtable.kbuckets import KBucketTable
from dhtstore.server.api import InvalidRequest
from dhtstore.sim import SequenceValidator, SimConfig, SimNetwork, run_virtual
from dhtstore.types import Message, MessageType, PeerInfo

PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
rng = random.Random(31)


def new_peer(addr: bytes = b"\x04\x7f\x00\x00\x01\x06\x0f\xa1") -> PeerInfo:
    return PeerInfo(PeerId(PREFIX + rng.randbytes(32)), (addr,))


class ScriptedMessenger:
    """Answers each peer with a scripted reply (or silence, or an error)."""

    def __init__(self, replies: dict[PeerId, Message | None]):
        self.replies = replies
        self.asked: list[PeerId] = []

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        self.asked.append(peer.peer_id)
        await anyio.sleep(0.05)
        reply = self.replies.get(peer.peer_id)
        if reply is None:
            await anyio.sleep(3600)  # never answers: the per-request timeout must fire
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def send(self, peer: PeerInfo, message: Message) -> None:
        self.asked.append(peer.peer_id)


def router_with(seeds: list[PeerInfo], replies: dict, **kw) -> tuple[KademliaRouter, ScriptedMessenger]:
    me = new_peer()
    table = KBucketTable(Key.for_peer(me.peer_id))
    for s in seeds:
        table.add(s, 0.0)
    messenger = ScriptedMessenger(replies)
    return KademliaRouter(me, table, messenger, SequenceValidator(), request_timeout=1.0, **kw), messenger


def test_no_peers_ends_at_once_with_a_clear_error():
    router, messenger = router_with([], {})

    async def main():
        with pytest.raises(NoPeersError, match="no peers in routing table"):
            await router.find_closest_peers(b"x", 20)
        return anyio.current_time()

    assert run_virtual(main) == 0.0 and messenger.asked == []


def test_hostile_closer_peers_are_skipped_and_counted():
    good = [new_peer() for _ in range(20)]
    liar = new_peer()
    seen_stats = []
    router, messenger = router_with([liar], {}, on_lookup=seen_stats.append)
    me = router.local
    junk = [
        good[0],  # a duplicate within the response
        me,  # the requester itself
        PeerInfo(PeerId(b"\x00\x05abc")),  # identity multihash with a wrong length
        PeerInfo(PeerId(b"\x12\x20" + b"\x01" * 5)),  # sha2-256 id with a 5-byte digest
        PeerInfo(PeerId(b"\xff\xff\xff")),  # not a multihash at all
        "not a peer",  # not even a PeerInfo
    ]
    flood = tuple(good + [junk[i % len(junk)] for i in range(10_000)])
    messenger.replies[liar.peer_id] = Message(MessageType.FIND_NODE, closer_peers=flood, skipped_peers=3)
    for p in good:
        messenger.replies[p.peer_id] = Message(MessageType.FIND_NODE, closer_peers=(liar,))

    peers = run_virtual(router.find_closest_peers, b"target", 20)

    assert {p.peer_id for p in peers} == {p.peer_id for p in good + [liar]} - {
        max(good + [liar], key=lambda p: Key.for_peer(p.peer_id).value ^ Key.hash(b"target").value).peer_id
    }
    stats = seen_stats[-1]
    # 9,980 past the 40-entry cap, 20 junk entries within it, 3 the codec could not parse
    assert stats.skipped_peers == 9_980 + 20 + 3
    assert messenger.asked.count(liar.peer_id) == 1 and me.peer_id not in messenger.asked
    assert len(set(messenger.asked)) == len(messenger.asked) == 20  # the top 20 of 21, once each


def peer_at_cpl(local: PeerInfo, cpl: int) -> PeerInfo:
    """A new peer whose key shares exactly ``cpl`` leading bits with ``local``'s."""
    key = Key.for_peer(local.peer_id)
    while True:
        p = new_peer()
        if Key.for_peer(p.peer_id).common_prefix_length(key) == cpl:
            return p


def test_silent_and_failing_peers_time_out_and_are_marked_failed():
    me = new_peer()
    silent, resetting, good = (peer_at_cpl(me, cpl) for cpl in (0, 1, 2))
    table = KBucketTable(Key.for_peer(me.peer_id), bucket_size=1)
    for p in (silent, resetting, good):
        assert table.add(p, 0.0)
    messenger = ScriptedMessenger(
        {resetting.peer_id: NetworkError("stream reset"), good.peer_id: Message(MessageType.FIND_NODE)}
    )
    router = KademliaRouter(me, table, messenger, SequenceValidator(), request_timeout=1.0, clock=anyio.current_time)

    async def main():
        peers = await router.find_closest_peers(b"k", 20)
        return peers, anyio.current_time()

    peers, elapsed = run_virtual(main)
    assert [p.peer_id for p in peers] == [good.peer_id]
    assert 1.0 <= elapsed < 2.0  # the per-request timeout (1 s) bounded the silent peer
    assert table.last_useful(good.peer_id) == pytest.approx(0.05)  # marked useful when it answered
    # The failed peers stay in the table until a newcomer to their bucket replaces them.
    assert silent.peer_id in table and resetting.peer_id in table
    for failed, cpl in ((silent, 0), (resetting, 1)):
        assert table.add(peer_at_cpl(me, cpl), 3.0) and failed.peer_id not in table
    assert not table.add(peer_at_cpl(me, 2), 3.0)  # the bucket of a useful peer stays full


def test_find_providers_takes_addresses_from_a_later_answer():
    a, b = new_peer(), new_peer()
    provider = new_peer(b"\x04\x0a\x00\x00\x09\x06\x0f\xa1")
    bare = PeerInfo(provider.peer_id)
    router, _ = router_with(
        [a, b],
        {
            a.peer_id: Message(MessageType.GET_PROVIDERS, provider_peers=(bare, bare)),
            b.peer_id: Message(MessageType.GET_PROVIDERS, provider_peers=(provider,)),
        },
    )
    assert run_virtual(router.find_providers, b"\x12\x20" + b"\x07" * 32, 5) == [provider]


def test_query_state_terminates_on_beta_then_follows_up_the_top_k():
    target = Key(0)
    peers = sorted((new_peer() for _ in range(8)), key=lambda p: Key.for_peer(p.peer_id).value)
    state = QueryState(target, peers, new_peer().peer_id, k=5, alpha=2, beta=2)
    first = state.next_peers()
    assert first == peers[:2] and state.next_peers() == []  # α = 2 in flight
    for p in first:
        state.on_response(p.peer_id, ())
    # the β = 2 closest answered: the lookup phase ends, the follow-up asks the rest of the top 5
    assert not state.finished and state.following_up
    asked = state.next_peers()
    assert asked == peers[2:4]
    state.on_failure(peers[2].peer_id)
    state.on_response(peers[3].peer_id, ())
    assert state.next_peers() == peers[4:6]  # peers[5] enters the top 5 once peers[2] failed
    for p in peers[4:6]:
        state.on_response(p.peer_id, ())
    assert state.finished
    assert state.closest_queried(5) == [peers[0], peers[1], peers[3], peers[4], peers[5]]
    assert state.state_of(peers[7].peer_id) is PeerState.HEARD


def test_a_lookup_survives_peers_that_reset_every_request():
    net = SimNetwork(SimConfig(nodes=200, seed=32))

    class Refusing:
        async def handle(self, sender, request):
            raise InvalidRequest("no")

    for node in net.nodes[50:100]:
        node.handler = Refusing()
    looker = net.node(0)
    peers = net.run(looker.router.find_closest_peers, b"anything", 20)
    assert len(peers) == 20 and all(net.by_id[p.peer_id].index not in range(50, 100) for p in peers)


def test_get_value_ignores_invalid_and_mismatched_records_and_corrects_their_holders():
    from dhtstore.types import Record

    key = b"/sim/k"
    good, forged, wrong_key, empty = new_peer(), new_peer(), new_peer(), new_peer()
    best = SequenceValidator.encode(3, b"best")
    router, messenger = router_with(
        [good, forged, wrong_key, empty],
        {
            good.peer_id: Message(MessageType.GET_VALUE, key=key, record=Record(key, best)),
            forged.peer_id: Message(MessageType.GET_VALUE, key=key, record=Record(key, b"short")),
            wrong_key.peer_id: Message(
                MessageType.GET_VALUE, key=key, record=Record(b"/sim/other", SequenceValidator.encode(9))
            ),
            empty.peer_id: Message(MessageType.GET_VALUE, key=key),
        },
    )
    record = run_virtual(router.get_value, key)
    assert record == Record(key, best)
    # one GET_VALUE to each, then the correcting PUT_VALUE to the three that lacked `best`
    corrected = messenger.asked[4:]
    assert sorted(corrected) == sorted([forged.peer_id, wrong_key.peer_id, empty.peer_id])
