"""The identify protocols on the host (libp2p specs, identify/README.md).

- ``/ipfs/id/1.0.0``: on every new connection we open a stream and the remote sends
  its Identify message and closes; we answer the remote's stream the same way.
- ``/ipfs/id/push/1.0.0``: when our protocols change (a handler set or removed, such
  as the kad protocol when the node turns server) we push our message to every
  connected peer; pushes from peers update what we know (missing fields unchanged).

What a peer tells us is checked (the public key must match the connection's peer)
and handed to the ``on_identified`` callback the host gives the service; the host
passes it on to its ``on_identify`` subscribers, from which the node learns a peer's
protocols (is it a DHT server?) and listen addresses.

Framing and limits are ``network.identify``'s: we read a stream to its end (at most
``MAX_STREAM_BYTES``) and hand it all to ``parse_identify``. Bounds, as go-libp2p's
identify: the listen addresses kept are those that make sense for the connection's
real remote address (``multiaddrs.for_remote``), at most 500 while connected and 20
once the peer is gone; pushes are rate-limited per peer (a token bucket of
``PUSH_BURST`` refilled at ``PUSH_RATE`` a second: go's identify limit per /24); a push
over it is reset unread and counted in the host's ``identify_push_limited`` (it spends
a token all the same: a peer that keeps pushing stays refused until it slows down).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio

from ..crypto.keys import PrivateKey
from ..errors import NetworkError
from ..peerid import PeerId
from . import multiaddrs
from .connection import CONNECTION_ERRORS
from .identify import (
    DEFAULT_PROTOCOL_VERSION,
    MAX_STREAM_BYTES,
    PROTOCOL_ID,
    PUSH_PROTOCOL_ID,
    IdentifyError,
    IdentifyInfo,
    build_identify,
    parse_identify,
)
from .limits import PeerRateLimiter
from .muxed import MuxedConnection as Connection
from .muxed import MuxedStream as Stream
from .muxed import StreamHandler

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds for one identify exchange
PUSH_DEBOUNCE = 0.05  # seconds: several handler changes in a row make one push
PUSH_RATE = 0.2  # pushes a second per peer, sustained (go: 0.2/s per IPv4 /24)
PUSH_BURST = 10.0
DISCONNECTED_MAX_ADDRS = 20  # go-libp2p identify recentlyConnectedPeerMaxAddrs


class IdentifyHost(Protocol):
    """What the identify service uses of its host (``network.host.Host``)."""

    @property
    def identity(self) -> PrivateKey: ...

    @property
    def agent_version(self) -> str: ...

    @property
    def protocols(self) -> list[str]: ...

    @property
    def stats(self) -> collections.Counter[str]: ...

    def advertised_addrs(self) -> list[bytes]: ...

    def connection(self, peer: PeerId) -> Connection | None: ...

    def connected_peers(self) -> list[PeerId]: ...

    async def new_stream(self, target: PeerId, protocols: Sequence[str]) -> Stream: ...

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    def add_addrs(self, peer: PeerId, addrs: Sequence[bytes]) -> None: ...

    def on_disconnect(self, callback: Callable[[PeerId], object]) -> None: ...


class IdentifyService:
    """Identify for one host: serve ``handlers()`` on it, call ``identify_peer`` for
    each new connection and ``protocols_changed`` when its protocols change;
    ``on_identified(peer, info)`` is called with what each peer tells us."""

    def __init__(self, host: IdentifyHost, on_identified: Callable[[PeerId, IdentifyInfo], None]):
        self._host = host
        self._on_identified = on_identified
        self._infos: dict[PeerId, IdentifyInfo] = {}
        self._push_scheduled = False
        self._push_limit = PeerRateLimiter(rate=PUSH_RATE, burst=PUSH_BURST)
        host.on_disconnect(self._forget)

    def handlers(self) -> dict[str, StreamHandler]:
        """The protocols identify serves, and their stream handlers."""
        return {PROTOCOL_ID: self._handle_identify, PUSH_PROTOCOL_ID: self._handle_push}

    def info(self, peer: PeerId) -> IdentifyInfo | None:
        """What the connected ``peer`` last told us, or None."""
        return self._infos.get(peer)

    def _forget(self, peer: PeerId) -> None:
        info = self._infos.pop(peer, None)
        if info is not None and len(info.listen_addrs) > DISCONNECTED_MAX_ADDRS:
            self._host.add_addrs(peer, info.listen_addrs[:DISCONNECTED_MAX_ADDRS])

    def our_message(self, conn: Connection) -> bytes:
        host = self._host
        return build_identify(
            host.identity.public_key(),
            listen_addrs=host.advertised_addrs(),
            protocols=host.protocols,
            observed_addr=conn.remote_addr.to_bytes(),
            agent_version=host.agent_version,
            protocol_version=DEFAULT_PROTOCOL_VERSION,
        )

    async def identify_peer(self, conn: Connection) -> None:
        """Ask the peer of a new connection who it is (runs once per connection)."""
        host = self._host
        try:
            with anyio.fail_after(TIMEOUT):
                stream = await host.new_stream(conn.remote_peer, [PROTOCOL_ID])
                try:
                    data = await _read_messages(stream)
                finally:
                    await stream.aclose()
            info = parse_identify(data, conn.remote_peer)
        except (TimeoutError, NetworkError, *CONNECTION_ERRORS) as exc:
            host.stats["identify_failures"] += 1
            log.debug("identify of %s failed: %s: %s", conn.remote_peer, type(exc).__name__, exc)
            return
        self._store(conn.remote_peer, info)

    def protocols_changed(self) -> None:
        """Schedule one push of our new protocol list to every connected peer."""
        if self._push_scheduled:
            return
        self._push_scheduled = True
        self._host.start_soon(self._push_all)

    async def _push_all(self) -> None:
        await anyio.sleep(PUSH_DEBOUNCE)
        self._push_scheduled = False
        async with anyio.create_task_group() as tg:
            for peer in self._host.connected_peers():
                tg.start_soon(self._push, peer)

    async def _push(self, peer: PeerId) -> None:
        conn = self._host.connection(peer)
        info = self._infos.get(peer)
        if conn is None or info is None or PUSH_PROTOCOL_ID not in info.protocols:
            return  # js-libp2p, for one, does not take pushes unless configured to
        try:
            with anyio.fail_after(TIMEOUT):
                stream = await self._host.new_stream(peer, [PUSH_PROTOCOL_ID])
                await stream.send(self.our_message(conn))
                await stream.aclose()
        except (TimeoutError, NetworkError, *CONNECTION_ERRORS) as exc:
            log.debug("identify push to %s failed: %s", peer, type(exc).__name__)

    async def _handle_identify(self, stream: Stream) -> None:
        with anyio.fail_after(TIMEOUT):
            await stream.send(self.our_message(stream.connection))

    async def _handle_push(self, stream: Stream) -> None:
        peer = stream.remote_peer
        if self._push_limit.delay(peer) > 0:
            self._host.stats["identify_push_limited"] += 1
            await stream.reset()
            return
        with anyio.fail_after(TIMEOUT):
            data = await _read_messages(stream)
        pushed = parse_identify(data, peer)
        previous = self._infos.get(peer)
        self._store(peer, previous.updated_by(pushed) if previous is not None else pushed)

    def _store(self, peer: PeerId, info: IdentifyInfo) -> None:
        conn = self._host.connection(peer)
        if conn is None:
            return  # gone meanwhile
        addrs = multiaddrs.for_remote(info.listen_addrs, conn.remote_addr.to_bytes())
        if len(addrs) != len(info.listen_addrs):
            info = dataclasses.replace(info, listen_addrs=addrs)
        self._infos[peer] = info
        self._on_identified(peer, info)


async def _read_messages(stream: Stream) -> bytes:
    """Everything the peer writes on an identify stream, up to its end."""
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)
        if len(data) > MAX_STREAM_BYTES:
            raise IdentifyError(f"identify stream over {MAX_STREAM_BYTES} bytes")
