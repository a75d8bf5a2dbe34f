"""Issue 6 over real sockets: a dhtstore node sweeps its provide list into a network of
js-libp2p kad-dht servers, and js finds every CID."""

from __future__ import annotations

import hashlib
from contextlib import AsyncExitStack

import anyio
import pytest
from cid import make_cid
from jspeer import start_js_peers

from dhtstore import multihash
from dhtstore.node import Node

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.slow]

JS_SERVERS = 8
CIDS = 60


def sha256_cid(i: int) -> str:
    mh = multihash.Multihash(multihash.SHA2_256, hashlib.sha256(b"cid %d" % i).digest()).to_bytes()
    return make_cid(1, "raw", mh).encode("base32").decode()


async def test_js_finds_every_cid_we_provide(js_harness, sqlite_store_url: str, loopback_options):
    async with AsyncExitStack() as stack:
        js = await stack.enter_async_context(start_js_peers(js_harness, JS_SERVERS))
        for peer in js[1:]:
            await peer.dial(js[0].addr)
        async with Node.start(loopback_options(sqlite_store_url, [js[0].addr], reprovide=True)) as node:
            with anyio.fail_after(30):
                await node.upkeep.bootstrapped.wait()
            await node.closest_peers(node.peer_id.to_bytes())

            cids = [sha256_cid(i) for i in range(CIDS)]
            assert (await node.start_provide(cids)).added == CIDS
            with anyio.fail_after(120):
                while (status := await node.reprovider.status()).provided_within_interval < CIDS:
                    await anyio.sleep(0.25)
            assert status.failing == 0
            # Far fewer lookups than one per CID: the point of the sweep.
            assert node.lookups["find_closest_peers"] < CIDS

        # Our node is gone: what js finds now, js's servers hold.
        missing = []
        for i, cid in enumerate(cids):
            finder = js[1 + i % (JS_SERVERS - 1)]
            result = await finder.find_providers(cid)
            if str(node.peer_id) not in {p["peerId"] for p in result["providers"]}:
                missing.append(cid)
        assert missing == []
