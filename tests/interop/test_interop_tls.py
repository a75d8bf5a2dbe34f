"""TLS (``/tls/1.0.0``) against js-libp2p nodes that speak only TLS (``@libp2p/tls``
3.1): every key type js has, both directions, identify, ping, FIND_NODE; and a
dhtstore node whose providers and peers TLS-only js nodes find."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from cid import from_string, make_cid
from jspeer import JsPeer, start_js_peer
from test_interop_js import KEY_TYPES, our_node

from dhtstore import multihash
from dhtstore.amino import PROTOCOL_ID
from dhtstore.kadkey import Key
from dhtstore.network.muxed import MuxedConnection
from dhtstore.node import Node, NodeOptions
from dhtstore.peerid import PeerId
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

TLS = "/tls/1.0.0"


@pytest.fixture(scope="module")
async def tls_peers(js_harness: str) -> AsyncIterator[dict[str, JsPeer]]:
    """One TLS-only js peer per key type, shared by the tests of this module."""
    async with AsyncExitStack() as stack:
        yield {
            kt: await stack.enter_async_context(start_js_peer(js_harness, key_type=kt, security=("tls",)))
            for kt in KEY_TYPES
        }


async def check_dialled_js_peer(node: Node, js: JsPeer, conn: MuxedConnection, key_type: str, secured_stat: str) -> None:
    """What a connection we dialled to a js peer must carry: its key type, identify,
    ping both ways and a FIND_NODE; counted once under ``secured_stat``; then hung up."""
    assert conn.remote_public_key.key_type.name.lower() == key_type.lower()
    info = await node.identified(js.peer_id)
    assert {PROTOCOL_ID, "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"} <= set(info.protocols)
    assert info.agent_version and info.agent_version.startswith("js-libp2p/")
    assert await node.host.ping(js.peer_id) >= 0
    assert await js.ping(peer_id=node.host.peer_id) >= 0
    reply = await node.messenger.request(PeerInfo(js.peer_id), Message(MessageType.FIND_NODE, key=js.peer_id.to_bytes()))
    assert js.peer_id in [p.peer_id for p in reply.closer_peers]
    assert node.host.stats[secured_stat] == 1
    await js.hang_up(node.host.peer_id)


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_we_dial_a_tls_only_js_peer(tls_peers: dict[str, JsPeer], key_type: str) -> None:
    js = tls_peers[key_type]
    async with our_node() as node:  # proposes /noise first: js refuses it, then TLS
        conn = await node.host.connect(js.addr)
        assert conn.security == TLS and conn.remote_peer == js.peer_id
        assert conn.early_muxer, "yamux agreed through ALPN, as js offers it"
        await check_dialled_js_peer(node, js, conn, key_type, "secured_tls")


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_a_tls_only_js_peer_dials_us(tls_peers: dict[str, JsPeer], key_type: str) -> None:
    js = tls_peers[key_type]
    async with our_node() as node:
        dialled = await js.dial(node.addr)
        assert dialled["peerId"] == str(node.host.peer_id)
        conn = node.host.connection(js.peer_id)
        assert conn is not None and conn.security == TLS and conn.early_muxer
        await js.wait_event(lambda e: e["event"] == "identify" and e["peerId"] == str(node.host.peer_id))
        peer_info = await js.peer_info(node.host.peer_id)
        assert PROTOCOL_ID in peer_info["protocols"] and peer_info["agentVersion"] == node.host.agent_version
        assert await js.ping(peer_id=node.host.peer_id) >= 0
        await js.wait_in_routing_table(node.host.peer_id)
        result = await js.get_closest_peers(b"key from a TLS-only js peer")
        ours = [r for r in result["responses"] if r["from"] == str(node.host.peer_id)]
        assert ours and ours[0]["messageType"] == "FIND_NODE"
        assert not [e for e in result["errors"] if e["from"] == str(node.host.peer_id)]
        await js.hang_up(node.host.peer_id)


def sha256_cid(data: bytes) -> str:
    mh = multihash.Multihash(multihash.SHA2_256, hashlib.sha256(data).digest()).to_bytes()
    return make_cid(1, "raw", mh).encode("base32").decode()


async def test_tls_only_js_nodes_find_our_providers_and_peers(js_harness: str, loopback_options: Callable[..., NodeOptions]) -> None:
    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(start_js_peer(js_harness, security=("tls",)))
        # A Noise-only js node provides a CID to our node: a record our node holds.
        noise_js = await stack.enter_async_context(start_js_peer(js_harness))
        node = await stack.enter_async_context(Node.start(loopback_options(None, [boot.addr])))
        with anyio.fail_after(30):
            await node.upkeep.bootstrapped.wait()
        assert node.host.connection(boot.peer_id).security == TLS
        # js follows a closer peer only if it is nearer the key than the peer that named
        # it: take a CID nearer boot than our node, so the finder goes on to boot.
        ours = cid_nearer(boot.peer_id, node.peer_id)
        assert await node.provide_once(ours) >= 1
        await eventually(lambda: provided_by(boot, ours, node.peer_id))  # js stores ADD_PROVIDER in the background
        await noise_js.dial(node.addresses()[0])
        await noise_js.wait_in_routing_table(node.peer_id)
        theirs = sha256_cid(b"provided by a noise js node")
        await noise_js.provide(theirs)
        with anyio.fail_after(20):
            while not await node.providers.get_providers(multihash_of(theirs)):
                await anyio.sleep(0.1)

        # A TLS-only js node that knows only our node finds both providers and the peers.
        finder = await stack.enter_async_context(start_js_peer(js_harness, security=("tls",)))
        await finder.dial(node.addresses()[0])
        await finder.wait_in_routing_table(node.peer_id)
        assert node.host.connection(finder.peer_id).security == TLS
        # The record our node holds comes straight from it; ours is on boot, one hop on.
        assert await provided_by(finder, theirs, noise_js.peer_id)
        assert await provided_by(finder, ours, node.peer_id)
        result = await finder.get_closest_peers(boot.peer_id.to_bytes())
        assert str(boot.peer_id) in {p["peerId"] for p in result["peers"]}
        assert any(r["from"] == str(node.peer_id) for r in result["responses"])
        # Our node finds a TLS-only js peer by its id too.
        found = await node.find_peer(finder.peer_id)
        assert found.peer_id == finder.peer_id
        # Each connection's security is counted, and scraped as dhtstore_network_events.
        events = node.stats().events
        assert events["secured_tls"] >= 2 and events["secured_noise"] >= 1
        scraped = {(s.labels["event"], s.value) for m in node.metrics.collector.collect() for s in m.samples if "event" in s.labels}
        assert ("secured_tls", events["secured_tls"]) in scraped


def cid_nearer(near: PeerId, far: PeerId) -> str:
    for i in range(1000):  # half of all keys qualify
        cid = sha256_cid(b"provided by our node %d" % i)
        key = Key.for_multihash(multihash_of(cid))
        if key.distance(Key.for_peer(near)) < key.distance(Key.for_peer(far)):
            return cid
    raise AssertionError("no key found")


async def provided_by(js: JsPeer, cid: str, provider: PeerId) -> bool:
    result = await js.find_providers(cid)
    return str(provider) in {p["peerId"] for p in result["providers"]}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.25)


def multihash_of(cid: str) -> bytes:
    return bytes(from_string(cid).multihash)
