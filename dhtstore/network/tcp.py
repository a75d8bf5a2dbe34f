"""TCP byte streams on asyncio's Protocol/Transport, as anyio ``ByteStream``s.

Why not ``anyio.connect_tcp``: anyio's asyncio ``SocketStream`` resumes and pauses
reading around every ``receive`` (two ``epoll_ctl`` calls) and yields to the loop
after every ``send``, which costs a small Kademlia request about a third of its round
trip (``scripts/bench_transport.py`` measures the transport). Here the transport reads continuously into a bounded buffer (reading
pauses above ``READ_HIGH_WATER`` unread bytes) and a send waits only when asyncio's
write buffer is over its limit. Everything above this module uses the anyio stream
interface, and anyio still runs the tasks (asyncio backend, as the node requires).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import cast

import anyio
import anyio.abc

READ_HIGH_WATER = 1024 * 1024  # unread bytes at which reading pauses
READ_LOW_WATER = 256 * 1024  # ... and resumes
CLOSE_GRACE = 2.0  # seconds a closed stream may spend flushing before it is aborted


class _Protocol(asyncio.Protocol):
    def __init__(self, on_connected: Callable[[TcpStream], None] | None = None):
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.write_paused_at: float | None = None  # since when the write buffer is over its limit
        self.eof = False
        self.lost = False
        self.error: Exception | None = None
        self._on_connected = on_connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass (uvloop's is not).
        self.transport = stream = cast(asyncio.Transport, transport)
        if self._on_connected is not None:
            self._on_connected(TcpStream(stream, self))

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        self.readable.set()
        if self.buffered > READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.readable.set()
        return True  # keep our side open: the remote only half-closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self.readable.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()
        self.write_paused_at = time.monotonic()

    def resume_writing(self) -> None:
        self.writable.set()
        self.write_paused_at = None


class TcpStream(anyio.abc.ByteStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol):
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        self.local_address: tuple[str, int] = transport.get_extra_info("sockname")[:2]
        self.remote_address: tuple[str, int] = transport.get_extra_info("peername")[:2]

    async def receive(self, max_bytes: int = 65536) -> bytes:
        p = self._protocol
        while not p.chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if p.eof:
                raise anyio.EndOfStream
            if p.lost:
                if p.error is None:
                    raise anyio.EndOfStream
                raise anyio.BrokenResourceError from p.error
            p.readable.clear()
            await p.readable.wait()
        chunk = p.chunks.popleft()
        if len(chunk) > max_bytes:
            p.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        p.buffered -= len(chunk)
        if p.reading_paused and p.buffered <= READ_LOW_WATER and not p.lost:
            p.reading_paused = False
            self._transport.resume_reading()
        return chunk

    async def wait_readable(self) -> None:
        """Return once a byte, the end of stream or an error has arrived."""
        p = self._protocol
        while not (p.chunks or p.eof or p.lost or self._closed):
            p.readable.clear()
            await p.readable.wait()

    def write(self, item: bytes) -> None:
        """Queue ``item`` without waiting for the peer to read (``drain`` waits)."""
        p = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if p.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError
        self._transport.write(item)

    async def drain(self) -> None:
        """Wait until the write buffer is below its limit again."""
        p = self._protocol
        if not p.writable.is_set():
            await p.writable.wait()
            if p.lost:
                raise anyio.BrokenResourceError

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def write_stalled_for(self, now: float) -> float:
        """Seconds the write buffer has been over its limit (0 when it is not)."""
        since = self._protocol.write_paused_at
        return 0.0 if since is None else now - since

    async def send(self, item: bytes) -> None:
        self.write(item)
        await self.drain()

    async def send_eof(self) -> None:
        try:
            self._transport.write_eof()
        except (OSError, RuntimeError):
            pass

    def abort(self) -> None:
        """Close at once, discarding unsent data: for a connection refused from the
        event loop's accept callback, where nothing can be awaited and nothing is owed."""
        self._closed = True
        self._transport.abort()
        self._protocol.readable.set()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.close()  # sends what is buffered, then closes ...
            if self._transport.get_write_buffer_size():  # ... unless the peer never reads
                asyncio.get_running_loop().call_later(CLOSE_GRACE, self._transport.abort)
            self._protocol.readable.set()
        await anyio.lowlevel.checkpoint()


async def connect(host: str, port: int, source_host: str | None = None) -> TcpStream:
    """A TCP connection, from ``source_host`` if given; OSError when it cannot be made."""
    loop = asyncio.get_running_loop()
    local = (source_host, 0) if source_host is not None else None
    transport, protocol = await loop.create_connection(_Protocol, host, port, local_addr=local)
    return TcpStream(transport, protocol)


async def listen(host: str, port: int, on_connection: Callable[[TcpStream], None]) -> asyncio.Server:
    """Listen on ``host:port``; ``on_connection(stream)`` is called (synchronously,
    from the event loop) for each accepted connection and must start its own task."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Protocol(on_connection), host, port)
