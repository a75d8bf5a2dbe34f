"""/ipfs/ping/1.0.0 between two hosts."""

from __future__ import annotations

import anyio
import pytest

from dhtstore.crypto.keys import PrivateKey
from dhtstore.errors import NetworkError
from dhtstore.network import multiaddrs
from dhtstore.network import ping as ping_protocol
from dhtstore.network.connection import Stream
from dhtstore.network.host import Host

pytestmark = pytest.mark.anyio


async def test_ping_round_trip_and_several_pings_on_one_stream() -> None:
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server, Host(PrivateKey.generate()) as client:
        target = str(multiaddrs.with_peer_id(server.listen_addrs[0], server.peer_id))
        assert await client.ping(target) >= 0
        stream = await client.new_stream(server.peer_id, [ping_protocol.PROTOCOL_ID])
        for _ in range(5):
            assert await ping_protocol.ping(stream) >= 0
        await stream.aclose()
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await stream.receive()  # the server closes its side when we close ours


async def test_a_peer_that_does_not_echo_fails_the_ping() -> None:
    async def swallow(stream: Stream) -> None:
        await stream.receive()
        await anyio.sleep_forever()

    async def corrupt(stream: Stream) -> None:
        payload = await stream.receive()
        await stream.send(bytes(b ^ 1 for b in payload))

    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]) as server, Host(PrivateKey.generate()) as client:
        target = str(multiaddrs.with_peer_id(server.listen_addrs[0], server.peer_id))
        server.set_handler(ping_protocol.PROTOCOL_ID, swallow)
        with pytest.raises(NetworkError, match="timed out"):
            await client.ping(target, timeout=0.2)
        server.set_handler(ping_protocol.PROTOCOL_ID, corrupt)
        with pytest.raises(NetworkError, match="does not match"):
            await client.ping(target)
