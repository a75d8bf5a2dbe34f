"""Serves inbound Kademlia streams with a ``server.api.RequestHandler``.

Per stream (libp2p kad-dht spec, go ``dht_net.go``): several requests one after
another; the stream is reset, with no answer, on a malformed frame or an
``InvalidRequest``; a stream idle for 60 s, or a request not answered within 30 s, is
reset. A ``None`` reply (ADD_PROVIDER) sends nothing and the stream stays open for the
next request.

A per-peer token bucket (``PeerRateLimiter``, 200 requests/s with bursts of 400 by
default) slows a flooding peer: its requests wait for its own tokens while other
peers' streams are served at once. Every refusal
is counted in ``KadServer.stats``; nothing a peer sends logs above DEBUG.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence

import anyio

from ..amino import PROTOCOL_ID, STREAM_IDLE_TIMEOUT
from ..network.api import (
    CONNECTION_ERRORS,
    FrameDecoder,
    Host,
    KadCodecError,
    PeerRateLimiter,
    Stream,
    encode_frame,
)
from ..types import PeerInfo
from .api import InvalidRequest, RequestHandler

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_STREAM = 100_000  # a bound on one stream's loop; the peer can open another
HANDLER_TIMEOUT = 30.0  # seconds to handle one request (rate-limit wait included)


class KadServer:
    """Call ``start()`` to serve (and advertise, through identify) the kad protocols,
    ``stop()`` to stop: a DHT server does, a client does not."""

    def __init__(
        self,
        host: Host,
        handler: RequestHandler,
        protocols: Sequence[str] = (PROTOCOL_ID,),
        *,
        limiter: PeerRateLimiter | None = None,
        idle_timeout: float = STREAM_IDLE_TIMEOUT,
    ):
        self._host = host
        self._handler = handler
        self.protocols = list(protocols)
        self.limiter = limiter or PeerRateLimiter()
        self._idle_timeout = idle_timeout
        self.stats: collections.Counter[str] = collections.Counter()
        host.on_disconnect(self.limiter.forget)

    def start(self) -> None:
        for protocol in self.protocols:
            self._host.set_handler(protocol, self.serve_stream)

    def stop(self) -> None:
        for protocol in self.protocols:
            self._host.remove_handler(protocol)

    async def serve_stream(self, stream: Stream) -> None:
        self.stats["streams"] += 1
        # One cancel scope for the whole stream, its deadline moved at each request
        # (a scope per read costs more than the rest of a small request).
        waiting = [True]  # waiting for a request (else handling one), for the counters
        with anyio.CancelScope() as deadline:
            outcome = await self._serve_requests(stream, deadline, waiting)
        if deadline.cancelled_caught:
            outcome = "idle_streams_reset" if waiting[0] else "handler_timeouts"
        if outcome is not None:
            self.stats[outcome] += 1
            await stream.reset()

    async def _serve_requests(self, stream: Stream, deadline: anyio.CancelScope, waiting: list[bool]) -> str | None:
        """Serve requests until the client closes (None) or the stream must be reset
        (the name of the counter saying why)."""
        peer = stream.remote_peer
        decoder = FrameDecoder()
        for _ in range(MAX_REQUESTS_PER_STREAM):
            deadline.deadline = anyio.current_time() + self._idle_timeout
            waiting[0] = True
            try:
                while (request := decoder.next_message()) is None:
                    decoder.receive_data(await stream.receive())
            except anyio.EndOfStream:
                if decoder.in_frame:
                    self.stats["truncated_frames"] += 1
                return None  # the client is done with this stream
            except KadCodecError as exc:
                log.debug("malformed kad request from %s: %s", peer, exc)
                return "malformed_requests"
            deadline.deadline = anyio.current_time() + HANDLER_TIMEOUT
            waiting[0] = False
            self.stats["requests"] += 1
            self.stats["skipped_peers"] += request.skipped_peers
            await self.limiter.acquire(peer)
            try:
                reply = await self._handler.handle(PeerInfo(peer, self._host.peer_addrs(peer)), request)
            except InvalidRequest as exc:
                log.debug("invalid %s request from %s: %s", request.type.name, peer, exc)
                return "invalid_requests"
            if reply is not None:
                try:
                    await stream.send(encode_frame(reply))
                except CONNECTION_ERRORS:
                    return None
                self.stats["replies"] += 1
        return "request_limit_resets"
