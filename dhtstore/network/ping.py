"""The libp2p ping protocol (``/ipfs/ping/1.0.0``): the dialer sends 32 random bytes,
the listener echoes them, on one stream, as many times as the dialer likes.

js-libp2p pings each new contact before it enters its routing table and every
connection periodically, and closes a connection whose ping is not echoed.
"""

from __future__ import annotations

import os
import time

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from ..errors import NetworkError
from .connection import CONNECTION_ERRORS
from .muxed import MuxedStream as Stream

PROTOCOL_ID = "/ipfs/ping/1.0.0"
PAYLOAD_SIZE = 32
PING_TIMEOUT = 10.0  # seconds for one round trip (js-libp2p ping's default)
IDLE_TIMEOUT = 60.0  # an inbound ping stream with no ping for this long is closed
MAX_PINGS_PER_STREAM = 10_000  # a bound on one stream's loop


async def handle_ping(stream: Stream) -> None:
    """Echo every 32-byte payload until the dialer closes, goes idle, or sends a stray tail."""
    reader = BufferedByteReceiveStream(stream)
    for _ in range(MAX_PINGS_PER_STREAM):
        with anyio.move_on_after(IDLE_TIMEOUT):
            try:
                payload = await reader.receive_exactly(PAYLOAD_SIZE)
            except anyio.IncompleteRead:  # closed, maybe mid-payload
                break
            await stream.send(payload)
            continue
        break  # idle
    await stream.aclose()


async def ping(stream: Stream, timeout: float = PING_TIMEOUT) -> float:
    """One ping round trip on an open ping stream; the round-trip time in seconds."""
    payload = os.urandom(PAYLOAD_SIZE)
    reader = BufferedByteReceiveStream(stream)
    started = time.perf_counter()
    try:
        with anyio.fail_after(timeout):
            await stream.send(payload)
            echo = await reader.receive_exactly(PAYLOAD_SIZE)
    except TimeoutError:
        raise NetworkError(f"ping to {stream.remote_peer} timed out after {timeout} s") from None
    except (anyio.IncompleteRead, *CONNECTION_ERRORS) as exc:
        raise NetworkError(f"ping to {stream.remote_peer} failed: {type(exc).__name__}") from None
    if echo != payload:
        raise NetworkError(f"ping to {stream.remote_peer}: echo does not match")
    return time.perf_counter() - started
