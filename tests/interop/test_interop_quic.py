"""QUIC v1 (``/quic-v1``) against js-libp2p nodes that speak only QUIC
(``@chainsafe/libp2p-quic`` 2.1, native, run on the Node 22 that ``npm ci`` installs):
every key type js has, both directions, identify, ping, FIND_NODE, provide and
find-providers; and a mixed network where one js node speaks only TLS over TCP, one
only QUIC, and our node serves both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import anyio
import pytest
from jspeer import JsPeer, start_js_peer
from test_interop_js import KEY_TYPES, our_node
from test_interop_tls import check_dialled_js_peer, cid_nearer, eventually, multihash_of, provided_by, sha256_cid

from dhtstore.amino import PROTOCOL_ID
from dhtstore.network import multiaddrs
from dhtstore.node import Node, NodeOptions

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

QUIC = "/quic-v1"
QUIC_LISTEN = "/ip4/127.0.0.1/udp/0/quic-v1"


def quic_only(node_bin: str, **options: Any) -> AbstractAsyncContextManager[JsPeer]:
    """A js peer that speaks only QUIC."""
    return start_js_peer(node_bin, transports=("quic",), listen=[QUIC_LISTEN], **options)


def is_quic(addr: str | bytes) -> bool:
    return multiaddrs.is_quic(multiaddrs.split_peer_id(multiaddrs.parse(addr))[0])


@pytest.fixture(scope="module")
async def quic_peers(js_harness_quic: str) -> AsyncIterator[dict[str, JsPeer]]:
    """One QUIC-only js peer per key type, shared by the tests of this module."""
    async with AsyncExitStack() as stack:
        yield {kt: await stack.enter_async_context(quic_only(js_harness_quic, key_type=kt)) for kt in KEY_TYPES}


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_we_dial_a_quic_only_js_peer(quic_peers: dict[str, JsPeer], key_type: str) -> None:
    js = quic_peers[key_type]
    assert is_quic(js.addr)
    async with our_node(listen=[QUIC_LISTEN]) as node:
        conn = await node.host.connect(js.addr)
        assert conn.security == QUIC and conn.remote_peer == js.peer_id
        await check_dialled_js_peer(node, js, conn, key_type, "secured_quic")


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_a_quic_only_js_peer_dials_us(quic_peers: dict[str, JsPeer], key_type: str) -> None:
    js = quic_peers[key_type]
    async with our_node(listen=[QUIC_LISTEN]) as node:
        dialled = await js.dial(node.addr)
        assert dialled["peerId"] == str(node.host.peer_id)
        conn = node.host.connection(js.peer_id)
        assert conn is not None and conn.security == QUIC
        await js.wait_event(lambda e: e["event"] == "identify" and e["peerId"] == str(node.host.peer_id))
        peer_info = await js.peer_info(node.host.peer_id)
        assert PROTOCOL_ID in peer_info["protocols"] and peer_info["agentVersion"] == node.host.agent_version
        ours = str(node.host.listen_addrs[0])
        assert any(a.startswith(ours) for a in peer_info["addrs"]), "identify told js our QUIC address"
        assert await js.ping(peer_id=node.host.peer_id) >= 0
        await js.wait_in_routing_table(node.host.peer_id)
        result = await js.get_closest_peers(b"key from a QUIC-only js peer")
        ours = [r for r in result["responses"] if r["from"] == str(node.host.peer_id)]
        assert ours and ours[0]["messageType"] == "FIND_NODE"
        assert not [e for e in result["errors"] if e["from"] == str(node.host.peer_id)]
        await js.hang_up(node.host.peer_id)


async def test_quic_only_js_nodes_provide_to_us_and_find_our_providers(
    js_harness_quic: str, loopback_options: Callable[..., NodeOptions]
) -> None:
    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(quic_only(js_harness_quic))
        node = await stack.enter_async_context(Node.start(loopback_options(None, [boot.addr], listen=[QUIC_LISTEN])))
        with anyio.fail_after(30):
            await node.upkeep.bootstrapped.wait()
        assert node.host.connection(boot.peer_id).security == QUIC  # type: ignore[union-attr]
        ours = cid_nearer(boot.peer_id, node.peer_id)
        assert await node.provide_once(ours) >= 1  # ADD_PROVIDER to js over QUIC
        await eventually(lambda: provided_by(boot, ours, node.peer_id))
        provider = await stack.enter_async_context(quic_only(js_harness_quic))
        await provider.dial(node.addresses()[0])
        await provider.wait_in_routing_table(node.peer_id)
        theirs = sha256_cid(b"provided by a QUIC-only js node")
        await provider.provide(theirs)  # js's ADD_PROVIDER to us over QUIC
        with anyio.fail_after(20):
            while not await node.providers.get_providers(multihash_of(theirs)):
                await anyio.sleep(0.1)
        records = await node.providers.get_providers(multihash_of(theirs))
        assert [r.provider.peer_id for r in records] == [provider.peer_id]
        assert any(is_quic(a) for a in records[0].provider.addrs)
        # A QUIC-only js node that knows only our node finds both records: the one our
        # node holds, and ours, one hop on at boot.
        finder = await stack.enter_async_context(quic_only(js_harness_quic))
        await finder.dial(node.addresses()[0])
        await finder.wait_in_routing_table(node.peer_id)
        assert await provided_by(finder, theirs, provider.peer_id)
        assert await provided_by(finder, ours, node.peer_id)
        result = await finder.get_closest_peers(boot.peer_id.to_bytes())
        assert str(boot.peer_id) in {p["peerId"] for p in result["peers"]}


async def test_a_mixed_network_tls_only_and_quic_only_js_nodes_both_served_by_our_node(
    js_harness_quic: str, loopback_options: Callable[..., NodeOptions]
) -> None:
    both = ["/ip4/127.0.0.1/tcp/0", QUIC_LISTEN]
    async with AsyncExitStack() as stack:
        node = await stack.enter_async_context(Node.start(loopback_options(None, [], listen=both)))
        tcp_addr, quic_addr = node.addresses()
        # The TLS-only peer runs on Node 22 too: the harness's TCP side works on either.
        tls_js = await stack.enter_async_context(start_js_peer(js_harness_quic, security=("tls",)))
        quic_js = await stack.enter_async_context(quic_only(js_harness_quic))
        await tls_js.dial(tcp_addr)
        await quic_js.dial(quic_addr)
        await tls_js.wait_in_routing_table(node.peer_id)
        await quic_js.wait_in_routing_table(node.peer_id)
        assert node.host.connection(tls_js.peer_id).security == "/tls/1.0.0"  # type: ignore[union-attr]
        assert node.host.connection(quic_js.peer_id).security == QUIC  # type: ignore[union-attr]
        by_tls = sha256_cid(b"provided over TLS")
        by_quic = sha256_cid(b"provided over QUIC")
        await tls_js.provide(by_tls)
        await quic_js.provide(by_quic)
        with anyio.fail_after(20):
            while not (
                await node.providers.get_providers(multihash_of(by_tls))
                and await node.providers.get_providers(multihash_of(by_quic))
            ):
                await anyio.sleep(0.1)
        # Each finds the other's record through our node, and the other peer itself.
        assert await provided_by(tls_js, by_quic, quic_js.peer_id)
        assert await provided_by(quic_js, by_tls, tls_js.peer_id)
        ours = sha256_cid(b"provided by our node to both")
        assert await node.provide_once(ours) >= 1
        await eventually(lambda: provided_by(tls_js, ours, node.peer_id))
        await eventually(lambda: provided_by(quic_js, ours, node.peer_id))
        found = await quic_js.find_peer(tls_js.peer_id)
        assert str(tls_js.peer_id) in {p["peerId"] for p in found["peers"]}
        found = await tls_js.find_peer(quic_js.peer_id)
        assert str(quic_js.peer_id) in {p["peerId"] for p in found["peers"]}
        events = node.stats().events
        assert events["secured_tls"] >= 1 and events["secured_quic"] >= 1
