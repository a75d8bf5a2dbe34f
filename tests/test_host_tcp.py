"""The TCP byte streams under the host (dhtstore.network.tcp)."""

from __future__ import annotations

import os

import anyio
import pytest

from dhtstore.network import tcp

pytestmark = pytest.mark.anyio


async def test_data_both_ways_half_close_and_read_back_pressure() -> None:
    accepted: list[tcp.TcpStream] = []
    arrived = anyio.Event()

    def on_connection(stream: tcp.TcpStream) -> None:
        accepted.append(stream)
        arrived.set()

    server = await tcp.listen("127.0.0.1", 0, on_connection)
    try:
        port = server.sockets[0].getsockname()[1]
        client = await tcp.connect("127.0.0.1", port)
        with anyio.fail_after(10):
            await arrived.wait()
        peer = accepted[0]
        assert client.remote_address == ("127.0.0.1", port) and peer.local_address == client.remote_address
        payload = os.urandom(3 * tcp.READ_HIGH_WATER)  # the reader pauses and resumes on the way

        async def write() -> None:
            await client.send(payload)
            await client.send_eof()

        received = bytearray()
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await anyio.sleep(0.05)  # let the unread data pile up to the high-water mark
                try:
                    while True:
                        received += await peer.receive(100_000)
                except anyio.EndOfStream:
                    pass
        assert received == payload
        await peer.send(b"after your eof")  # half-closed: our direction still works
        assert await client.receive() == b"after your eof"
        await peer.aclose()
        with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await client.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await peer.receive()
        await client.aclose()
    finally:
        server.close()


async def test_connect_to_a_closed_port_is_an_os_error() -> None:
    server = await tcp.listen("127.0.0.1", 0, lambda stream: None)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await tcp.connect("127.0.0.1", port)


async def test_closing_towards_a_peer_that_never_reads_aborts_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "CLOSE_GRACE", 0.1)
    accepted: list[tcp.TcpStream] = []
    server = await tcp.listen("127.0.0.1", 0, accepted.append)
    try:
        client = await tcp.connect("127.0.0.1", server.sockets[0].getsockname()[1])
        with anyio.fail_after(5):
            while not accepted:
                await anyio.sleep(0.01)
        sender = accepted[0]
        with anyio.move_on_after(0.2):  # the client never reads: our send blocks when buffers fill
            while True:
                await sender.send(b"x" * 65536)
        await sender.aclose()
        with anyio.fail_after(5):
            while not sender._protocol.lost:  # aborted, not left open with a full buffer
                await anyio.sleep(0.01)
        await client.aclose()
    finally:
        server.close()


async def test_abort_from_the_accept_callback_closes_the_connection_at_once() -> None:
    refused: list[tcp.TcpStream] = []

    def on_connection(stream: tcp.TcpStream) -> None:  # a host that is not running refuses so
        stream.abort()
        refused.append(stream)

    server = await tcp.listen("127.0.0.1", 0, on_connection)
    try:
        client = await tcp.connect("127.0.0.1", server.sockets[0].getsockname()[1])
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await client.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await refused[0].send(b"too late")
        await client.aclose()
    finally:
        server.close()
