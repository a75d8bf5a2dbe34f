"""Issue 5's mixed network: 8 js-libp2p kad-dht servers and 3 dhtstore nodes (two
servers, one client) on loopback, all bootstrapped from one js node."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import AsyncExitStack

import anyio
import pytest
from cid import make_cid
from jspeer import start_js_peers

from dhtstore import multihash
from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.node import Node
from dhtstore.peerid import PeerId
from dhtstore.records import pk
from dhtstore.routing.api import NotFound

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.slow]

JS_SERVERS = 8


def sha256_cid(data: bytes) -> str:
    """A CIDv1 (raw, sha2-256): js decodes provider keys as sha2-256 CIDs."""
    mh = multihash.Multihash(multihash.SHA2_256, hashlib.sha256(data).digest()).to_bytes()
    return make_cid(1, "raw", mh).encode("base32").decode()


async def eventually(check, timeout: float = 30.0, interval: float = 0.25):
    """Await ``check()`` until it returns a truthy value (bounded by ``timeout``)."""
    with anyio.fail_after(timeout):
        while not (result := await check()):
            await anyio.sleep(interval)
    return result


async def test_mixed_network(js_harness, tmp_path, loopback_options):
    async with AsyncExitStack() as stack:
        js = await stack.enter_async_context(start_js_peers(js_harness, JS_SERVERS))
        boot = js[0]
        for peer in js[1:]:
            await peer.dial(boot.addr)
        # An RSA identity too, so the /pk/ record is one that must be stored (not inlined).
        s1 = await stack.enter_async_context(Node.start(loopback_options(None, [boot.addr], identity=PrivateKey.generate(KeyType.RSA))))
        s2 = await stack.enter_async_context(Node.start(loopback_options(None, [boot.addr])))
        client = await stack.enter_async_context(Node.start(loopback_options(None, [boot.addr], mode="client")))
        for node in (s1, s2, client):
            with anyio.fail_after(30):
                await node.upkeep.bootstrapped.wait()
        # Let every node learn the network.
        for node in (s1, s2, client):
            await node.closest_peers(node.peer_id.to_bytes())
        for peer in js[1:4]:
            await peer.get_closest_peers(peer.peer_id.to_bytes())

        # Our identify is right: js admits our servers, never our client.
        async def js_tables() -> list[set[PeerId]]:
            return [set(await p.routing_table()) for p in js]

        async def both_servers_admitted() -> list[set[PeerId]] | None:
            tables = await js_tables()
            admitted = all(any(s.peer_id in t for t in tables) for s in (s1, s2))
            return tables if admitted else None

        tables = await eventually(both_servers_admitted, timeout=60)
        assert client.peer_id not in set().union(*tables)
        assert len([p for p in s1.table.peers() if p.peer_id in {j.peer_id for j in js}]) >= 4

        # A CID provided by js is found by `dhtstore findprovs`.
        js_cid = sha256_cid(b"provided by js")
        await js[3].provide(js_cid)
        env = {**os.environ, "DHTSTORE_DATA_DIR": str(tmp_path / "cli")}
        found = await anyio.run_process(
            [sys.executable, "-m", "dhtstore", "findprovs", js_cid, "--bootstrap", boot.addr, "--json", "--timeout", "60"],
            env=env, check=False,
        )
        assert found.returncode == 0, found.stderr.decode()
        assert str(js[3].peer_id) in {p["id"] for p in json.loads(found.stdout)}

        # A CID provided by dhtstore is found by js's findProviders.
        our_cid = sha256_cid(b"provided by dhtstore")
        assert await s2.provide_once(our_cid) >= 1

        async def js_sees_our_provider():
            result = await js[5].find_providers(our_cid)
            return str(s2.peer_id) in {p["peerId"] for p in result["providers"]}

        await eventually(js_sees_our_provider)

        # Find-peer both ways.
        located = await client.find_peer(js[6].peer_id)
        assert located is not None and located.addrs
        result = await js[7].find_peer(s2.peer_id)
        assert str(s2.peer_id) in {p["peerId"] for p in result["peers"]}

        # /pk/ records both ways (js echoes a PUT even when it rejects it: read back).
        our_key = pk.routing_key(s1.peer_id)
        assert await s1.put_value(our_key, s1.options.identity.public_key().to_protobuf()) >= 1

        async def js_reads_our_record():
            result = await js[2].get(our_key)
            return any(bytes.fromhex(v["value"]) == s1.options.identity.public_key().to_protobuf() for v in result["values"])

        await eventually(js_reads_our_record)

        rsa_js = await stack.enter_async_context(start_js_peers(js_harness, 1, key_type="RSA"))
        await rsa_js[0].dial(boot.addr)
        await rsa_js[0].dial(s1.addresses()[0])  # s1's identify learns the js peer's RSA key
        await rsa_js[0].get_closest_peers(rsa_js[0].peer_id.to_bytes())
        js_public_key = s1.host.identify.info(rsa_js[0].peer_id).public_key
        js_key = pk.routing_key(rsa_js[0].peer_id)
        await rsa_js[0].put(js_key, js_public_key.to_protobuf())

        async def we_read_js_record():
            try:
                return await client.get_value(js_key)
            except NotFound:  # not stored yet
                return None

        record = await eventually(we_read_js_record)
        assert PeerId.from_public_key_bytes(record.value) == rsa_js[0].peer_id
