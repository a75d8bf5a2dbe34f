"""Serves inbound Kademlia streams with a ``server.api.RequestHandler``.

Per stream (libp2p kad-dht spec, go ``dht_net.go``): several requests one after
another; the stream is reset, with no answer, on a malformed frame or an
``InvalidRequest``; a stream idle for 60 s, or a request not answered within 30 s, is
reset. A ``None`` reply (ADD_PROVIDER) sends nothing and the stream stays open for the
next request; a stream's ADD_PROVIDERs are handled together, and a reply after them is
sent once they are all stored (``_PipelinedWrites``).

A per-peer token bucket (``PeerRateLimiter``, 200 requests/s with bursts of 400 by
default) slows a flooding peer: its requests wait for its own tokens while other
peers' streams are served at once. Every refusal
is counted in ``KadServer.stats``; nothing a peer sends logs above DEBUG.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.abc

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
from ..peerid import PeerId
from ..types import Message, MessageType, PeerInfo
from .api import InvalidRequest, RequestHandler

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_STREAM = 100_000  # a bound on one stream's loop; the peer can open another
HANDLER_TIMEOUT = 30.0  # seconds to handle one request (rate-limit wait included)
MAX_PIPELINED_WRITES = 256  # a stream's ADD_PROVIDERs being stored at once (``_PipelinedWrites``)
MAX_RUN = 64  # ADD_PROVIDERs handed to the handler in one call


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
        outcome: str | None = None  # stays None when an invalid write stopped the reading
        try:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as reading:
                    writes = _PipelinedWrites(tg, on_failure=reading.cancel)
                    outcome = await self._serve_in_order(stream, deadline, waiting, writes)
                if writes.failure is not None or await writes.drained() is not None:
                    return "invalid_requests"
        except BaseExceptionGroup as group:  # the stream's own error, for the host to handle
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise
        return outcome

    def _sender(self, peer: PeerId) -> PeerInfo:
        return PeerInfo(peer, self._host.peer_addrs(peer))

    async def _serve_in_order(
        self, stream: Stream, deadline: anyio.CancelScope, waiting: list[bool], writes: _PipelinedWrites
    ) -> str | None:
        peer = stream.remote_peer
        decoder = FrameDecoder()
        run: list[Message] = []  # consecutive ADD_PROVIDERs not handed over yet
        for _ in range(MAX_REQUESTS_PER_STREAM):
            try:
                if (request := decoder.next_message()) is None:
                    if run:  # nothing more is buffered: store the run while waiting for the peer
                        await writes.start(self._handler.add_providers, self._sender(peer), run)
                        run = []
                    deadline.deadline = anyio.current_time() + self._idle_timeout
                    waiting[0] = True
                    while (request := decoder.next_message()) is None:
                        decoder.receive_data(await stream.receive())
            except anyio.EndOfStream:
                if decoder.in_frame:
                    self.stats["truncated_frames"] += 1
                return None  # the client is done with this stream
            except KadCodecError as exc:
                if run:  # the requests before the bad frame were good
                    await writes.start(self._handler.add_providers, self._sender(peer), run)
                log.debug("malformed kad request from %s: %s", peer, exc)
                return "malformed_requests"
            if waiting[0] or not (run and request.type is MessageType.ADD_PROVIDER):  # a run shares one
                deadline.deadline = anyio.current_time() + HANDLER_TIMEOUT
                waiting[0] = False
            self.stats["requests"] += 1
            self.stats["skipped_peers"] += request.skipped_peers
            await self.limiter.acquire(peer)
            if request.type is MessageType.ADD_PROVIDER:
                run.append(request)
                if len(run) >= MAX_RUN:
                    await writes.start(self._handler.add_providers, self._sender(peer), run)
                    run = []
                continue
            sender = self._sender(peer)
            try:
                if run:  # a reply follows at once: store the run here, no task needed
                    await self._handler.add_providers(sender, run)
                    run = []
            except InvalidRequest:  # logged by the handler
                return "invalid_requests"
            if await writes.drained() is not None:  # a reply acknowledges the writes before it
                return "invalid_requests"
            try:
                reply = await self._handler.handle(sender, request)
            except InvalidRequest as exc:
                log.debug("invalid %s request from %s: %s", request.type.name, peer, exc)
                return "invalid_requests"
            if reply is not None:
                try:
                    await stream.send(encode_frame(reply))
                except CONNECTION_ERRORS:
                    return None
                self.stats["replies"] += 1
        if run:
            await writes.start(self._handler.add_providers, self._sender(peer), run)
        return "request_limit_resets"


class _PipelinedWrites:
    """A stream's ADD_PROVIDERs, handled while the requests after them are read.

    ADD_PROVIDER has no reply, and a client sends them in runs (a sweep sends a region's
    records back to back, then a request that is answered). Handled one after another,
    each would wait for its own commit, and a stream would put one record into each
    group commit. Here the ADD_PROVIDERs that arrived together go to the handler as one
    run (``RequestHandler.add_providers``), and several runs are stored at once. Any
    reply on the stream waits until every ADD_PROVIDER before it is stored, so a reply
    still acknowledges only stored records, as when they were handled in order. An
    invalid one stops the stream's reading (``on_failure``), and the stream is reset.
    """

    def __init__(self, tg: anyio.abc.TaskGroup, on_failure: Callable[[], None], limit: int = MAX_PIPELINED_WRITES):
        self._tg = tg
        self._on_failure = on_failure
        self._limit = limit
        self._in_flight = 0  # records handed over and not yet stored
        self._changed = anyio.Event()  # set when a run finishes
        self.failure: InvalidRequest | None = None

    async def start(self, store: Callable[[PeerInfo, Sequence[Message]], Awaitable[None]], sender: PeerInfo, run: list[Message]) -> None:
        while self._in_flight >= self._limit:  # the next read waits for room
            await self._wait_change()
        self._in_flight += len(run)
        self._tg.start_soon(self._store, store, sender, run)

    async def _store(self, store: Callable[[PeerInfo, Sequence[Message]], Awaitable[None]], sender: PeerInfo, run: list[Message]) -> None:
        try:
            await store(sender, run)
        except InvalidRequest as exc:  # logged by the handler
            self.failure = self.failure or exc
            self._on_failure()
        finally:
            self._in_flight -= len(run)
            self._changed.set()

    async def _wait_change(self) -> None:
        self._changed = anyio.Event()
        await self._changed.wait()

    async def drained(self) -> InvalidRequest | None:
        """Wait until every run handed over is done; the first invalid request, if any."""
        while self._in_flight:
            await self._wait_change()
        return self.failure
