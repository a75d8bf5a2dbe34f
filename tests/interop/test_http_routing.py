"""The real Helia client (``@helia/delegated-routing-v1-http-api-client``, pinned in
js/package-lock.json) against ``dhtstore``'s Delegated Routing V1 HTTP API, in a network
of js-libp2p kad-dht servers: providers, peers and an IPNS round trip."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from jspeer import JS_DIR, JsPeer, start_js_peers

from dhtstore import multihash
from dhtstore.crypto.keys import PrivateKey
from dhtstore.node import Node
from dhtstore.records import ipns

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.slow]

CLIENT_SCRIPT = JS_DIR / "routing-client.mjs"


def sha256_cid(text: str) -> str:
    mh = multihash.Multihash(multihash.SHA2_256, hashlib.sha256(text.encode()).digest()).to_bytes()
    return multihash.cid_string(mh)


@dataclass
class Helia:
    node_bin: str
    url: str

    async def call(self, op: str, **args: Any) -> Any:
        request = json.dumps({"url": self.url, "op": op, **args})
        with anyio.fail_after(60):
            done = await anyio.run_process([self.node_bin, str(CLIENT_SCRIPT), request], cwd=JS_DIR, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        reply = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if not reply["ok"]:
            raise LookupError(reply["error"])
        return reply["result"]


@dataclass
class Network:
    js: list[JsPeer]
    node: Node
    helia: Helia


@pytest.fixture
async def network(js_harness: str, sqlite_store_url: str, loopback_options: Any) -> AsyncIterator[Network]:
    async with AsyncExitStack() as stack:
        js = await stack.enter_async_context(start_js_peers(js_harness, 3))
        for peer in js[1:]:
            await peer.dial(js[0].addr)
        node = await stack.enter_async_context(Node.start(loopback_options(sqlite_store_url, [js[0].addr], reprovide=True)))
        with anyio.fail_after(30):
            await node.upkeep.bootstrapped.wait()
        await node.closest_peers(node.peer_id.to_bytes())  # meets js[1] and js[2] through js[0]
        host, port = await stack.enter_async_context(node.routing_api().serve("127.0.0.1", 0))
        yield Network(js, node, Helia(js_harness, f"http://{host}:{port}"))


async def test_helia_finds_providers_js_announced_and_ours(network: Network) -> None:
    announced = sha256_cid("provided by js")
    await network.js[1].wait_in_routing_table(network.node.peer_id)
    await network.js[1].provide(announced)
    found = await network.helia.call("providers", cid=announced)
    assert network.js[1].peer_id.to_cid_string() in [p["ID"] for p in found]

    ours = sha256_cid("provided by dhtstore")
    await network.node.start_provide([ours])
    (me,) = await network.helia.call("providers", cid=ours)
    assert me["ID"] == network.node.peer_id.to_cid_string()
    assert me["Addrs"] and all("/tcp/" in a for a in me["Addrs"])

    assert await network.helia.call("providers", cid=sha256_cid("nobody has it")) == []  # the 404


async def test_helia_finds_peers(network: Network) -> None:
    target = network.js[2]
    (peer,) = await network.helia.call("peers", peerId=str(target.peer_id))
    assert peer["ID"] == target.peer_id.to_cid_string()
    assert any(target.addr.startswith(addr) for addr in peer["Addrs"])
    assert await network.helia.call("peers", peerId=str(PrivateKey.generate().peer_id())) == []


async def test_helia_ipns_put_and_get(network: Network) -> None:
    key = PrivateKey.generate()
    name = key.peer_id().to_cid_string()
    eol = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    record = ipns.create(key, b"/ipfs/" + sha256_cid("a page").encode(), 1, eol)
    with pytest.raises(LookupError, match="NotFoundError"):
        await network.helia.call("getIPNS", name=name)
    assert await network.helia.call("putIPNS", name=name, recordHex=record.hex()) is None
    stored = await network.node.values.get(ipns.routing_key(key.peer_id()))
    assert stored is not None and stored.value == record
    assert bytes.fromhex(await network.helia.call("getIPNS", name=name)) == record
    other = PrivateKey.generate()
    forged = ipns.create(other, b"/ipfs/" + sha256_cid("not theirs").encode(), 2, eol)
    with pytest.raises(LookupError, match="BadResponseError"):  # our 400: signed by another key
        await network.helia.call("putIPNS", name=name, recordHex=forged.hex())
