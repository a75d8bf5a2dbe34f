"""Our host against real js-libp2p peers (libp2p 3.2, kad-dht 16.2): Noise with every
key type js offers, identify and ping both ways, Kademlia FIND_NODE both ways, and
two of our hosts in one network with a js peer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from jspeer import JsPeer, start_js_peer

from dhtstore.amino import LAN_PROTOCOL_ID, PROTOCOL_ID
from dhtstore.crypto.keys import PrivateKey
from dhtstore.network import multiaddrs
from dhtstore.network.host import Host
from dhtstore.network.identify import IdentifyInfo
from dhtstore.network.kadmessenger import LibP2PKadMessenger
from dhtstore.network.security import DEFAULT_SECURITY
from dhtstore.peerid import PeerId
from dhtstore.server.api import RequestHandler
from dhtstore.server.kadserver import KadServer
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

KEY_TYPES = ["Ed25519", "secp256k1", "RSA"]  # what js-libp2p 3.2 can be (its ECDSA has no peer id)


@dataclass
class ConnectedPeersHandler(RequestHandler):
    """Answers FIND_NODE with the connected peers that identify says are kad servers."""

    host: Host
    protocol: str = PROTOCOL_ID
    requests: list[tuple[PeerId, Message]] = field(default_factory=list)

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        self.requests.append((sender.peer_id, request))
        closer = []
        for peer in self.host.connected_peers():
            info = self.host.identify.info(peer)
            if peer != sender.peer_id and info is not None and self.protocol in info.protocols:
                closer.append(PeerInfo(peer, self.host.peer_addrs(peer)))
        return Message(request.type, key=request.key, closer_peers=tuple(closer))


@dataclass
class Node:
    host: Host
    handler: ConnectedPeersHandler
    messenger: LibP2PKadMessenger

    @property
    def addr(self) -> str:
        return str(multiaddrs.with_peer_id(self.host.listen_addrs[0], self.host.peer_id))

    async def identified(self, peer: PeerId) -> IdentifyInfo:
        with anyio.fail_after(10):
            while (info := self.host.identify.info(peer)) is None:
                await anyio.sleep(0.02)
        return info


@asynccontextmanager
async def our_node(
    protocol: str = PROTOCOL_ID,
    security: Sequence[str] = DEFAULT_SECURITY,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
) -> AsyncIterator[Node]:
    async with Host(PrivateKey.generate(), list(listen), security=security) as host:
        handler = ConnectedPeersHandler(host, protocol)
        KadServer(host, handler, [protocol]).start()
        yield Node(host, handler, LibP2PKadMessenger(host, [protocol]))


@pytest.fixture(scope="module")
async def js_peers(js_harness: str) -> AsyncIterator[dict[str, JsPeer]]:
    """One js peer per key type, shared by the tests of this module."""
    async with AsyncExitStack() as stack:
        yield {kt: await stack.enter_async_context(start_js_peer(js_harness, key_type=kt)) for kt in KEY_TYPES}


def transport_part(addr: str) -> bytes:
    return multiaddrs.split_peer_id(multiaddrs.parse(addr))[0].to_bytes()


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_we_dial_js(js_peers: dict[str, JsPeer], key_type: str) -> None:
    js = js_peers[key_type]
    async with our_node() as node:
        conn = await node.host.connect(js.addr)
        assert conn.remote_peer == js.peer_id
        assert conn.early_muxer, "yamux agreed in the Noise handshake, as js offers it"
        assert conn.remote_public_key.key_type.name.lower() == key_type.lower()
        # identify: we see js's protocols and listen address
        info = await node.identified(js.peer_id)
        assert {PROTOCOL_ID, "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"} <= set(info.protocols)
        assert transport_part(js.addr) in info.listen_addrs
        assert info.agent_version and info.agent_version.startswith("js-libp2p/")
        # js sees ours
        seen = await js.wait_event(lambda e: e["event"] == "identify" and e["peerId"] == str(node.host.peer_id))
        assert PROTOCOL_ID in seen["protocols"]
        assert str(node.host.listen_addrs[0]) in seen["addrs"]
        # ping both ways
        assert await node.host.ping(js.peer_id) >= 0
        assert await js.ping(peer_id=node.host.peer_id) >= 0
        # FIND_NODE from us: js answers, the answer parses
        reply = await node.messenger.request(PeerInfo(js.peer_id), Message(MessageType.FIND_NODE, key=b"somewhere"))
        assert reply.type is MessageType.FIND_NODE and reply.skipped_peers == 0
        reply = await node.messenger.request(
            PeerInfo(js.peer_id), Message(MessageType.FIND_NODE, key=js.peer_id.to_bytes())
        )
        assert js.peer_id in [p.peer_id for p in reply.closer_peers]  # js answers its own id with itself
        await js.hang_up(node.host.peer_id)


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_js_dials_us(js_peers: dict[str, JsPeer], key_type: str) -> None:
    js = js_peers[key_type]
    async with our_node() as node:
        dialled = await js.dial(node.addr)
        assert dialled["peerId"] == str(node.host.peer_id)
        assert node.host.connection(js.peer_id).early_muxer
        await js.wait_event(lambda e: e["event"] == "identify" and e["peerId"] == str(node.host.peer_id))
        peer_info = await js.peer_info(node.host.peer_id)
        assert {PROTOCOL_ID, "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"} <= set(peer_info["protocols"])
        assert str(node.host.listen_addrs[0]) in peer_info["addrs"]
        assert peer_info["agentVersion"] == node.host.agent_version
        info = await node.identified(js.peer_id)
        assert PROTOCOL_ID in info.protocols
        assert await js.ping(peer_id=node.host.peer_id) >= 0
        # FIND_NODE from js: our answer parses on the js side (no query error)
        await js.wait_in_routing_table(node.host.peer_id)
        result = await js.get_closest_peers(b"key from js")
        ours = [r for r in result["responses"] if r["from"] == str(node.host.peer_id)]
        assert ours and ours[0]["messageType"] == "FIND_NODE"
        assert not [e for e in result["errors"] if e["from"] == str(node.host.peer_id)]
        assert any(sender == js.peer_id for sender, _ in node.handler.requests)
        await js.hang_up(node.host.peer_id)


async def test_lan_protocol_both_ways(js_harness: str) -> None:
    async with our_node(LAN_PROTOCOL_ID) as node, start_js_peer(js_harness, protocol=LAN_PROTOCOL_ID) as js:
        await node.host.connect(js.addr)
        info = await node.identified(js.peer_id)
        assert LAN_PROTOCOL_ID in info.protocols and PROTOCOL_ID not in info.protocols
        reply = await node.messenger.request(PeerInfo(js.peer_id), Message(MessageType.FIND_NODE, key=b"lan"))
        assert reply.type is MessageType.FIND_NODE
        await js.wait_in_routing_table(node.host.peer_id)
        result = await js.get_closest_peers(b"lan key")
        assert any(r["from"] == str(node.host.peer_id) for r in result["responses"])


async def test_a_js_client_does_not_advertise_kad(js_harness: str) -> None:
    async with our_node() as node, start_js_peer(js_harness, client_mode=True) as js:
        await node.host.connect(js.addr)
        info = await node.identified(js.peer_id)
        assert PROTOCOL_ID not in info.protocols


async def test_two_of_our_hosts_and_a_js_peer_find_each_other(js_peers: dict[str, JsPeer]) -> None:
    js = js_peers["Ed25519"]
    async with our_node() as a, our_node() as b:
        await a.host.connect(b.addr)
        await a.identified(b.host.peer_id)
        # our two hosts exchange kad messages directly
        reply = await a.messenger.request(PeerInfo(b.host.peer_id), Message(MessageType.FIND_NODE, key=b"x"))
        assert reply.type is MessageType.FIND_NODE
        # js learns of b only through a's FIND_NODE answer, then queries b itself
        await js.dial(a.addr)
        await a.identified(js.peer_id)
        await js.wait_in_routing_table(a.host.peer_id)
        result = await js.get_closest_peers(b.host.peer_id.to_bytes())
        responders = {r["from"] for r in result["responses"]}
        assert {str(a.host.peer_id), str(b.host.peer_id)} <= responders
        assert str(b.host.peer_id) in {p["peerId"] for p in result["peers"]}
        await js.hang_up(a.host.peer_id)
        await js.hang_up(b.host.peer_id)
