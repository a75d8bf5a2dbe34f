"""Our host and node against py-libp2p (PyPI ``libp2p`` 0.8.1 on trio; see
pylibp2p_peer.py), an implementation independent of js-libp2p and of ours: both
directions over Noise and over TLS with Ed25519, secp256k1 and RSA py peers (identify,
ping, FIND_NODE), and a provide by each side found by the other.

Each py peer on TCP offers and accepts both Noise and TLS; our host is restricted to one
of them, so the connection has to agree on that one (when py dials with TLS, it proposes
/noise first, we refuse it, and it goes on to /tls/1.0.0). Each case runs over a
``channel``: TCP with Noise, TCP with TLS, or QUIC (py-libp2p's, on aioquic)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

import anyio
import pytest
from jspeer import JsPeerError
from pylibp2p_peer import PyPeer, start_py_peer
from test_interop_js import our_node
from test_interop_tls import multihash_of, sha256_cid

from dhtstore.amino import PROTOCOL_ID
from dhtstore.network import multiaddrs
from dhtstore.node import Node, NodeOptions
from dhtstore.peerid import PeerId
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

KEY_TYPES = ["ed25519", "secp256k1", "rsa"]
T = TypeVar("T")
log = logging.getLogger(__name__)
# How py-libp2p 0.8.1 reports a stream it tried on a QUIC connection object that never
# started: its listener at times hands its swarm such an object for the peer that
# dialled it (our one connection to it is up, and carries our streams meanwhile).
PY_QUIC_UNSTARTED = "Connection State: established=False, handshake=False"
# What our host counts when a stream or connection fails on our side.
OUR_STREAM_FAILURES = ("stream_errors", "stream_negotiation_timeouts", "handler_errors", "connection_protocol_errors")
IDENTIFY, PING = "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"


@dataclasses.dataclass(frozen=True)
class Channel:
    transport: str  # "tcp" or "quic"
    security: str  # what py reports for the connection: "noise", "tls" or "quic"

    @property
    def listen(self) -> str:
        return "/ip4/127.0.0.1/udp/0/quic-v1" if self.transport == "quic" else "/ip4/127.0.0.1/tcp/0"

    @property
    def our_security(self) -> tuple[str, ...]:
        """What our host offers and accepts (QUIC brings its own TLS 1.3)."""
        return ("noise", "tls") if self.transport == "quic" else (self.security,)

    @property
    def protocol_id(self) -> str | None:
        """The security protocol id our connection must report; None over QUIC."""
        return {"noise": "/noise", "tls": "/tls/1.0.0"}.get(self.security)


CHANNELS = [
    pytest.param(Channel("tcp", "noise"), id="tcp-noise"),
    pytest.param(Channel("tcp", "tls"), id="tcp-tls"),
    pytest.param(Channel("quic", "quic"), id="quic"),
]


async def start_peers(python: str, transport: str) -> AsyncIterator[dict[str, PyPeer]]:
    """One py-libp2p peer per key type, each knowing the others."""
    async with AsyncExitStack() as stack:
        peers = {
            kt: await stack.enter_async_context(
                start_py_peer(python, key_type=kt, security=("noise", "tls"), transport=transport)
            )
            for kt in KEY_TYPES
        }
        await know_each_other(list(peers.values()))
        yield peers


@pytest.fixture(scope="module")
async def tcp_peers(pylibp2p_python: str) -> AsyncIterator[dict[str, PyPeer]]:
    async for peers in start_peers(pylibp2p_python, "tcp"):
        yield peers


@pytest.fixture(scope="module")
async def quic_peers(pylibp2p_python: str) -> AsyncIterator[dict[str, PyPeer]]:
    async for peers in start_peers(pylibp2p_python, "quic"):
        yield peers


async def know_each_other(peers: list[PyPeer]) -> None:
    """Connect the py peers pairwise and put each in the others' routing tables, so that
    each has kad servers to name in its FIND_NODE answers."""
    for i, a in enumerate(peers):
        for b in peers[i + 1 :]:
            await a.dial(b.addr)
            await a.add_to_routing_table(b.peer_id)
            await b.add_to_routing_table(a.peer_id)


@pytest.fixture
def py_peers(request: pytest.FixtureRequest, channel: Channel) -> dict[str, PyPeer]:
    """The shared py peers of the channel's transport (started once per module)."""
    peers: dict[str, PyPeer] = request.getfixturevalue(f"{channel.transport}_peers")
    return peers


async def from_py(node: Node, request: Callable[[], Awaitable[T]], channel: Channel) -> T:
    """A request py makes of our node, on a stream py opens. Over QUIC, py-libp2p 0.8.1
    at times fails such a stream on its side:
    - on a connection object of its own that never started (``PY_QUIC_UNSTARTED``):
      the case is skipped with py's report;
    - on its established connection, failing to read the multistream reply on a
      stream for which our host counted no error (seen in one CI run and in one of ~30
      local runs of the QUIC cases). The request is made once more and must then succeed.
    Any other failure, and any failure that our host counted too, fails the test."""
    ours = node.host.stats
    before = [ours[name] for name in OUR_STREAM_FAILURES]
    try:
        return await request()
    except JsPeerError as exc:
        if channel.transport != "quic":
            raise
        # py's stderr tail may hold earlier streams' reports too: read this one's, the last
        this_stream = str(exc).rpartition("Failed to open stream to peer")[2]
        if PY_QUIC_UNSTARTED in this_stream:
            pytest.skip(f"py-libp2p 0.8.1 opened its stream on a QUIC connection of its own that never started: {exc}")
        if [ours[name] for name in OUR_STREAM_FAILURES] != before:
            raise
        log.warning("py-libp2p failed a QUIC stream for which our host counted no error; asking once more: %s", exc)
        return await request()


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_we_dial_a_py_peer(py_peers: dict[str, PyPeer], channel: Channel, key_type: str) -> None:
    py = py_peers[key_type]
    async with our_node(security=channel.our_security, listen=(channel.listen,)) as node:
        conn = await node.host.connect(py.addr)
        assert conn.remote_peer == py.peer_id
        assert channel.protocol_id is None or conn.security == channel.protocol_id
        assert conn.remote_public_key.key_type.name.lower() == key_type
        await py_has_connection(py, node.host.peer_id, channel.security)
        # What py's identify tells us, and what ours tells py.
        info = await node.identified(py.peer_id)
        assert {PROTOCOL_ID, IDENTIFY, PING} <= set(info.protocols)
        assert info.agent_version and info.agent_version.startswith("py-libp2p/")
        theirs = await from_py(node, lambda: py.identify(node.host.peer_id), channel)
        assert theirs["agentVersion"] == node.host.agent_version and PROTOCOL_ID in theirs["protocols"]
        assert await node.host.ping(py.peer_id) >= 0
        assert await from_py(node, lambda: py.ping(node.host.peer_id), channel) >= 0
        # FIND_NODE of py's own id: py answers from its routing table, which holds the
        # other py peers (and never names the peer that asks, as go does).
        reply = await node.messenger.request(PeerInfo(py.peer_id), Message(MessageType.FIND_NODE, key=py.peer_id.to_bytes()))
        assert reply.type == MessageType.FIND_NODE
        named = {p.peer_id: p for p in reply.closer_peers}
        others = [p for p in py_peers.values() if p is not py]
        assert {p.peer_id for p in others} <= set(named) and node.host.peer_id not in named
        for other in others:  # with the address each listens on, that we parse
            assert other.addr.split("/p2p/")[0] in transport_addrs(named[other.peer_id], other.peer_id)
        await py.hang_up(node.host.peer_id)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_a_py_peer_dials_us(py_peers: dict[str, PyPeer], channel: Channel, key_type: str) -> None:
    py = py_peers[key_type]
    async with our_node(security=channel.our_security, listen=(channel.listen,)) as node:
        dialled = await py.dial(node.addr)
        assert dialled["peerId"] == str(node.host.peer_id)
        conn = node.host.connection(py.peer_id)
        assert conn is not None and (channel.protocol_id is None or conn.security == channel.protocol_id)
        await py_has_connection(py, node.host.peer_id, channel.security)
        theirs = await from_py(node, lambda: py.identify(node.host.peer_id), channel)
        assert theirs["agentVersion"] == node.host.agent_version
        assert {PROTOCOL_ID, IDENTIFY, PING} <= set(theirs["protocols"])
        assert node.addr.split("/p2p/")[0] in theirs["listenAddrs"]
        info = await node.identified(py.peer_id)
        assert info.agent_version and info.agent_version.startswith("py-libp2p/")
        assert await from_py(node, lambda: py.ping(node.host.peer_id), channel) >= 0
        assert await node.host.ping(py.peer_id) >= 0
        # A kad query from py reaches us as FIND_NODE, and our answer is taken.
        await py.add_to_routing_table(node.host.peer_id)
        key = b"key from a py-libp2p peer " + key_type.encode()
        before = len(node.handler.requests)
        closest = await from_py(node, lambda: py.get_closest_peers(key), channel)
        ours = [m for sender, m in node.handler.requests[before:] if sender == py.peer_id]
        assert ours and ours[0].type == MessageType.FIND_NODE and ours[0].key == key
        assert node.host.peer_id in closest
        await py.hang_up(node.host.peer_id)


@pytest.mark.parametrize("channel", CHANNELS)
async def test_providers_both_ways(
    py_peers: dict[str, PyPeer], channel: Channel, loopback_options: Callable[..., NodeOptions]
) -> None:
    """Our node provides and a py peer finds it; a py peer provides and our node finds it."""
    boot, finder, provider = (py_peers[kt] for kt in KEY_TYPES)
    options = dataclasses.replace(
        loopback_options(None, [boot.addr]), security=channel.our_security, listen=[channel.listen]
    )
    async with Node.start(options) as node:
        with anyio.fail_after(30):
            await node.upkeep.bootstrapped.wait()
        conn = node.host.connection(boot.peer_id)
        assert conn is not None and (channel.protocol_id is None or conn.security == channel.protocol_id)
        # Ours: sent as ADD_PROVIDER to the closest peers we know, found by another py peer.
        ours = sha256_cid(b"provided by our node over " + str(channel).encode())
        assert await node.provide_once(ours) >= 1
        await finder.dial(node.addresses()[0])
        await finder.add_to_routing_table(node.peer_id)
        await eventually_found(finder, ours, node.peer_id)
        # Theirs: a py peer provides (py echoes each ADD_PROVIDER, which our reused
        # streams must not take for the next reply); we store the record and find it.
        await provider.dial(node.addresses()[0])
        await provider.add_to_routing_table(node.peer_id)
        theirs = sha256_cid(b"provided by a py-libp2p peer over " + str(channel).encode())
        assert await provider.provide(theirs)
        with anyio.fail_after(20):
            while not await node.providers.get_providers(multihash_of(theirs)):
                await anyio.sleep(0.1)
        found = await node.find_providers(theirs)
        assert provider.peer_id in [p.peer_id for p in found]
        # And FIND_NODE across: our node finds a py peer by its id.
        assert (await node.find_peer(finder.peer_id)).peer_id == finder.peer_id
        for py in (boot, finder, provider):
            await py.hang_up(node.peer_id)


async def eventually_found(py: PyPeer, cid: str, provider: PeerId, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while provider not in [PeerId.from_string(p["peerId"]) for p in await py.find_providers(cid)]:
            await anyio.sleep(0.25)


async def py_has_connection(py: PyPeer, peer: PeerId, security: str, timeout: float = 10.0) -> None:
    """Wait until py lists a connection to ``peer`` secured by ``security`` (py registers
    an inbound connection a moment after the handshake that our side has finished)."""
    wanted = {"peerId": str(peer), "security": security}
    with anyio.fail_after(timeout):
        while wanted not in await py.connections():
            await anyio.sleep(0.05)


def transport_addrs(info: PeerInfo, peer: PeerId) -> list[str]:
    """The addresses of ``info`` without their ``/p2p/<id>`` suffix (py-libp2p sends
    its peers' addresses with one, go without), each suffix checked to name ``peer``."""
    result = []
    for raw in info.addrs:
        transport, named = multiaddrs.split_peer_id(multiaddrs.parse(raw))
        assert named in (None, peer)
        result.append(str(transport))
    return result
