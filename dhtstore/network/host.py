"""The libp2p host: TCP and QUIC listeners and dials, one secured multiplexed
connection per peer, protocol negotiation on every stream, and the built-in ping and
identify services.

Transports: ``/ip4|ip6/…/tcp/…`` (Noise or TLS, then yamux: ``connection.py``) and
``/ip4|ip6/…/udp/…/quic-v1`` (``quic.py``: one UDP socket per listen address). The
host keeps either as a ``muxed.MuxedConnection``; what runs above it (kad, identify,
ping) sees the same streams. A dial tries a peer's QUIC addresses first, then TCP.

Use::

    async with Host(identity, ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]) as host:
        host.set_handler("/my/proto/1.0.0", handle)   # async def handle(stream) -> None
        stream = await host.new_stream(peer_info, ["/my/proto/1.0.0"])
        rtt = await host.ping(peer_info)

Everything the host starts belongs to its task group; leaving the ``async with``
closes every connection (yamux go-away, then the socket) and every listener.

Bad input never escapes: a handshake that fails or stalls past its timeout closes
that socket and is counted in ``host.stats``; a stream whose handler raises is reset.

Limits (``HostLimits``): the resource manager's (``network.resources``: connections,
handshakes, streams and frame memory per system, IP, peer, protocol, connection and
stream), the connection manager's (past ``high_water`` connections, the lowest scored
are closed down to ``low_water``, whatever streams they have open, sparing young
connections, protected peers and peers we have requests in flight with), streams per
connection, an inbound socket silent past ``first_byte_timeout`` dropped, and timeouts
on handshakes, dials and stream negotiation.

Security (``security``, names from ``security.SECURITY_PROTOCOLS``): the protocols a
dial proposes, in that order, and inbound connections accept; ``stats`` counts each
connection's as ``secured_noise`` / ``secured_tls`` (``secured_quic`` for QUIC, whose
TLS 1.3 is QUIC's own).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import anyio
import anyio.abc
from multiaddr import Multiaddr

from ..crypto.keys import PrivateKey
from ..errors import NetworkError
from ..peerid import PeerId
from ..types import PeerInfo
from . import multiaddrs, quic, tcp
from . import ping as ping_protocol
from .api import IdentifyCallback, PeerCallback, PeerTarget
from .connection import (
    CONNECTION_ERRORS,
    Connection,
    Stream,
    Upgraded,
    negotiate,
    upgrade,
)
from .identify import IdentifyInfo
from .identifyservice import IdentifyService
from .limits import HostLimits
from .multistream import MultistreamDialer, MultistreamListener
from .muxed import MuxedConnection, MuxedStream, StreamHandler
from .resources import ConnectionScope, ResourceLimitExceeded, ResourceManager, current_stream_scope
from .security import DEFAULT_SECURITY, protocol_ids, security_name

__all__ = ["AGENT_VERSION", "DEFAULT_SECURITY", "DialError", "Host", "HostLimits", "Stream", "StreamHandler"]

log = logging.getLogger(__name__)

AGENT_VERSION = "dhtstore/0.1.0"
MAX_DIAL_ADDRS = 8  # addresses tried per dial, in the order given
MAX_ADDRESS_BOOK = 10_000  # peers whose addresses the host remembers (LRU)


class DialError(NetworkError):
    """No address of the peer could be dialled, or the peer is not who we expected."""


class _PendingDial:
    """The one dial in flight to a peer; later callers wait for its outcome."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.connection: MuxedConnection | None = None
        self.error: Exception | None = None

    async def wait(self) -> MuxedConnection:
        await self.done.wait()
        if self.connection is None:
            raise self.error or DialError("dial failed")
        return self.connection


class Host:
    """Implements ``network.api.Host``."""

    def __init__(
        self,
        identity: PrivateKey,
        listen_addrs: Iterable[str | Multiaddr] = (),
        *,
        limits: HostLimits = HostLimits(),
        agent_version: str = AGENT_VERSION,
        security: Sequence[str] = DEFAULT_SECURITY,
    ):
        self.identity = identity
        self.security = protocol_ids(security)  # proposed in this order; accepted inbound
        self.peer_id = identity.peer_id()
        self.limits = limits
        self.agent_version = agent_version
        self._requested_listen = [multiaddrs.parse(a) if isinstance(a, str) else a for a in listen_addrs]
        self.listen_addrs: list[Multiaddr] = []  # bound addresses, known once started
        self.stats: collections.Counter[str] = collections.Counter()
        self._handlers: dict[str, StreamHandler] = {}
        self._connections: dict[PeerId, MuxedConnection] = {}
        self._dials: dict[PeerId, _PendingDial] = {}
        self._address_book: collections.OrderedDict[PeerId, tuple[bytes, ...]] = collections.OrderedDict()
        self._on_identify: list[IdentifyCallback] = []
        self._on_disconnect: list[PeerCallback] = []
        self.resources = ResourceManager(limits.resources, self.stats)
        self._quic = quic.QuicTransport(
            identity,
            max_streams=limits.max_streams_per_connection,
            on_inbound_stream=self._on_inbound_stream,
            keepalive_interval=min(limits.keepalive_interval, quic.KEEPALIVE),
        )
        self._quic_listeners: list[quic.Endpoint] = []
        self._quic_dialers: dict[int, quic.Endpoint] = {}  # by IP version: when no listener fits
        self._busy: collections.Counter[PeerId] = collections.Counter()  # requests in flight per peer
        self._keep: list[Callable[[PeerId], bool]] = []  # predicates of protected peers
        self._trimming = False
        self._closing = False
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.identify = IdentifyService(self, on_identified=self._identified)
        # The built-in protocols: set directly, as set_handler would schedule an identify push.
        self._handlers[ping_protocol.PROTOCOL_ID] = ping_protocol.handle_ping
        self._handlers.update(self.identify.handlers())

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Host:
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
            for addr in self._requested_listen:
                await self._listen(addr)
            self._tg.start_soon(self._trim_loop)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        assert self._stack is not None and self._tg is not None
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            async with anyio.create_task_group() as closers:
                for conn in list(self._connections.values()):
                    closers.start_soon(conn.close)
        self._tg.cancel_scope.cancel()
        await self._stack.__aexit__(None, None, None)

    async def _listen(self, addr: Multiaddr) -> None:
        if multiaddrs.is_quic(addr):
            await self._listen_quic(addr)
            return
        host, port = multiaddrs.tcp_endpoint(addr)
        server = await tcp.listen(host, port, self._on_tcp_connection)
        assert self._stack is not None
        self._stack.callback(server.close)
        bound_port = server.sockets[0].getsockname()[1]
        self.listen_addrs.append(multiaddrs.from_tcp_endpoint(host, bound_port))

    async def _listen_quic(self, addr: Multiaddr) -> None:
        host, port = multiaddrs.quic_endpoint(addr)
        endpoint = await quic.open_endpoint(self._quic, self.stats, host, port, self._admit_quic, self._on_quic_connection)
        assert self._stack is not None
        self._stack.callback(endpoint.close)
        self._quic_listeners.append(endpoint)
        self.listen_addrs.append(endpoint.local_addr)

    def _on_tcp_connection(self, sock: tcp.TcpStream) -> None:
        if self._tg is None or self._closing:
            sock.abort()
            return
        self._tg.start_soon(self._accept, sock)

    # -- protocols and callbacks -------------------------------------------------

    @property
    def protocols(self) -> list[str]:
        """The protocols we accept inbound streams for, as identify advertises them."""
        return sorted(self._handlers)

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: ``handler(stream)`` runs for each inbound stream; the
        stream is closed when it returns and reset if it raises."""
        changed = protocol not in self._handlers
        self._handlers[protocol] = handler
        if changed:
            self.identify.protocols_changed()

    def remove_handler(self, protocol: str) -> None:
        if self._handlers.pop(protocol, None) is not None:
            self.identify.protocols_changed()

    def on_identify(self, callback: IdentifyCallback) -> None:
        """``callback(peer_id, info)`` after each identify or identify push from a peer."""
        self._on_identify.append(callback)

    def on_disconnect(self, callback: PeerCallback) -> None:
        self._on_disconnect.append(callback)

    # -- connection manager ------------------------------------------------------

    def protect_when(self, predicate: Callable[[PeerId], bool]) -> None:
        """Never trim the connection to a peer for which ``predicate(peer)`` is true
        (the node protects its routing table's members)."""
        self._keep.append(predicate)

    @contextmanager
    def busy(self, peer: PeerId) -> Iterator[None]:
        """Work in flight with ``peer``: its connection is not trimmed meanwhile."""
        self._busy[peer] += 1
        try:
            yield
        finally:
            self._busy[peer] -= 1
            if not self._busy[peer]:
                del self._busy[peer]

    def resource_usage(self) -> dict[str, int]:
        return self.resources.usage()

    def _protected(self, peer: PeerId) -> bool:
        return peer in self._busy or any(keep(peer) for keep in self._keep)

    # -- peers -------------------------------------------------------------------

    def connection(self, peer: PeerId) -> MuxedConnection | None:
        conn = self._connections.get(peer)
        return conn if conn is not None and not conn.closed else None

    def connected_peers(self) -> list[PeerId]:
        return [p for p, c in self._connections.items() if not c.closed]

    def peer_addrs(self, peer: PeerId) -> tuple[bytes, ...]:
        """The addresses we know for ``peer`` (identify, or the last dial), binary."""
        return self._address_book.get(peer, ())

    def add_addrs(self, peer: PeerId, addrs: Iterable[bytes]) -> None:
        """Remember addresses for ``peer`` (replacing what we had)."""
        valid = tuple(a for a in addrs if multiaddrs.is_valid(a))
        if not valid:
            return
        self._address_book.pop(peer, None)
        self._address_book[peer] = valid
        if len(self._address_book) > MAX_ADDRESS_BOOK:
            self._address_book.popitem(last=False)

    def advertised_addrs(self) -> list[bytes]:
        """Our listen addresses as peers can dial them (unspecified hosts expanded)."""
        out: list[bytes] = []
        for addr in self.listen_addrs:
            is_quic = multiaddrs.is_quic(addr)
            host, port = multiaddrs.endpoint(addr)
            hosts = _interface_addresses(host) if host in ("0.0.0.0", "::") else [host]
            make = multiaddrs.from_quic_endpoint if is_quic else multiaddrs.from_tcp_endpoint
            out.extend(make(h, port).to_bytes() for h in hosts)
        return out

    # -- dialling ----------------------------------------------------------------

    async def connect(self, target: PeerTarget) -> MuxedConnection:
        """The connection to the target peer, dialling it if needed (one dial per peer
        at a time: concurrent callers share it). Raises DialError."""
        peer, addrs = self._resolve(target)
        if (conn := self.connection(peer)) is not None:
            return conn
        if peer == self.peer_id:
            raise DialError("refusing to dial ourselves")
        if self._closing or self._tg is None:
            raise DialError("host is not running")
        pending = self._dials.get(peer)
        if pending is None:
            pending = _PendingDial()
            self._dials[peer] = pending
            self.start_soon(self._dial, peer, addrs, pending)
        return await pending.wait()

    async def new_stream(self, target: PeerTarget, protocols: Sequence[str]) -> MuxedStream:
        """A new stream to the peer, speaking the first of ``protocols`` it accepts.
        Raises NetworkError (DialError if the peer cannot be reached, and
        ResourceLimitExceeded when our own limits refuse the stream)."""
        conn = await self.connect(target)
        stream: MuxedStream
        try:
            stream = await conn.open_stream()
        except anyio.BrokenResourceError:
            conn = await self.connect(target)  # it closed under us: one more try
            try:
                stream = await conn.open_stream()
            except anyio.BrokenResourceError:
                raise NetworkError(f"connection to {conn.remote_peer} closed while opening a stream") from None
        try:
            with anyio.fail_after(self.limits.negotiate_timeout):
                agreed = await negotiate(MultistreamDialer(protocols), stream.send, stream.receive)
        except (TimeoutError, *CONNECTION_ERRORS) as exc:
            await stream.reset()
            raise NetworkError(f"{conn.remote_peer} did not accept {list(protocols)}: {_describe(exc)}") from None
        try:
            stream.resources.set_protocol(agreed.protocol)
        except ResourceLimitExceeded:
            await stream.reset()
            raise
        stream.protocol = agreed.protocol
        stream.unread(agreed.leftover)
        return stream

    async def ping(self, target: PeerTarget, timeout: float = ping_protocol.PING_TIMEOUT) -> float:
        """Round-trip time in seconds of one ``/ipfs/ping/1.0.0`` exchange."""
        stream = await self.new_stream(target, [ping_protocol.PROTOCOL_ID])
        try:
            return await ping_protocol.ping(stream, timeout)
        finally:
            await stream.aclose()

    def _resolve(self, target: PeerTarget) -> tuple[PeerId, tuple[bytes, ...]]:
        if isinstance(target, PeerId):
            return target, self.peer_addrs(target)
        if isinstance(target, PeerInfo):
            return target.peer_id, target.addrs or self.peer_addrs(target.peer_id)
        try:
            ma = multiaddrs.parse(target) if isinstance(target, str) else target
        except multiaddrs.MultiaddrFormatError as exc:
            raise DialError(str(exc)) from None
        transport, peer = multiaddrs.split_peer_id(ma)
        if peer is None:
            raise DialError(f"cannot dial {ma}: it does not end in /p2p/<peer id>")
        return peer, (transport.to_bytes(),)

    async def _dial(self, peer: PeerId, addrs: tuple[bytes, ...], pending: _PendingDial) -> None:
        errors: list[str] = []
        try:
            for raw in _dialable(addrs)[:MAX_DIAL_ADDRS]:
                try:
                    pending.connection = await self._dial_addr(peer, raw)
                    self.add_addrs(peer, addrs)
                    return
                except DialError as exc:
                    errors.append(str(exc))
            pending.error = DialError(
                f"cannot dial {peer}: " + ("; ".join(errors) if errors else "no TCP or QUIC address known")
            )
            self.stats["dial_failures"] += 1
        finally:
            self._dials.pop(peer, None)
            pending.done.set()

    async def _dial_addr(self, peer: PeerId, raw: bytes) -> MuxedConnection:
        addr = multiaddrs.parse(raw)
        if multiaddrs.is_quic(addr):
            return await self._dial_quic(peer, addr)
        host, port = multiaddrs.tcp_endpoint(addr)
        sock: tcp.TcpStream | None = None
        try:
            scope = self.resources.open_outbound()
        except ResourceLimitExceeded as exc:
            raise DialError(f"{addr}: {exc}") from None
        try:
            with anyio.fail_after(self.limits.dial_timeout):
                sock = await tcp.connect(host, port, self._source_host(host))
                upgraded = await upgrade(sock, self.identity, True, peer, self.security)
            scope.secured(upgraded.remote_peer)
        except (TimeoutError, *CONNECTION_ERRORS) as exc:
            scope.close()
            if sock is not None:
                await _close_quietly(sock)
            raise DialError(f"{addr}: {_describe(exc)}") from None
        conn = self._connection(sock, upgraded, scope, initiator=True, remote_addr=addr)
        return await self._keep_dialled(conn)

    async def _keep_dialled(self, conn: MuxedConnection) -> MuxedConnection:
        kept = self._add_connection(conn)
        if kept is conn:
            self.start_soon(self._run_connection, conn)
        else:
            await conn.close()
        return kept

    async def _dial_quic(self, peer: PeerId, addr: Multiaddr) -> MuxedConnection:
        host, port = multiaddrs.quic_endpoint(addr)
        try:
            scope = self.resources.open_outbound()
        except ResourceLimitExceeded as exc:
            raise DialError(f"{addr}: {exc}") from None
        conn: quic.Connection | None = None
        try:
            endpoint = await self._quic_endpoint_for(host)
            conn = endpoint.dial(host, port, peer, scope)
            with anyio.fail_after(self.limits.dial_timeout):
                await conn.handshake()
            scope.secured(conn.remote_peer)
        except (TimeoutError, *CONNECTION_ERRORS) as exc:
            if conn is not None:
                conn.abort()
            scope.close()
            raise DialError(f"{addr}: {_describe(exc)}") from None
        return await self._keep_dialled(conn)

    async def _quic_endpoint_for(self, destination: str) -> quic.Endpoint:
        """The UDP socket to dial ``destination`` from: a listener of its family and
        reach (so the peer sees our listen port, as go-libp2p does), else one ephemeral
        socket per family, opened on first use."""
        dest = ipaddress.ip_address(destination)
        for endpoint in self._quic_listeners:
            host, _ = multiaddrs.quic_endpoint(endpoint.local_addr)
            ip = ipaddress.ip_address(host)
            if ip.version == dest.version and (ip.is_unspecified or ip.is_loopback == dest.is_loopback):
                return endpoint
        dialer = self._quic_dialers.get(dest.version)
        if dialer is None:
            dialer = await quic.open_endpoint(self._quic, self.stats, "::" if dest.version == 6 else "0.0.0.0", 0)
            assert self._stack is not None
            self._stack.callback(dialer.close)
            self._quic_dialers[dest.version] = dialer
        return dialer

    # -- accepting ---------------------------------------------------------------

    async def _accept(self, sock: tcp.TcpStream) -> None:
        self.stats["inbound_sockets"] += 1
        try:
            await self._accept_connection(sock)
        except Exception as exc:  # a bug must not take the listener down with it
            self.stats["internal_errors"] += 1
            log.warning("inbound connection failed unexpectedly: %s: %s", type(exc).__name__, exc)
            log.debug("inbound connection failure", exc_info=True)
        finally:
            await _close_quietly(sock)

    async def _accept_connection(self, sock: tcp.TcpStream) -> None:
        limits = self.limits
        if self._closing:
            self.stats["refused_connections"] += 1
            return
        try:
            scope = self.resources.open_inbound(sock.remote_address[0])
        except ResourceLimitExceeded:
            self.stats["refused_connections"] += 1
            return
        conn: Connection | None = None  # once made, it gives the scope back when it closes
        try:
            with anyio.move_on_after(limits.first_byte_timeout) as first_byte:
                await sock.wait_readable()
            if first_byte.cancelled_caught:
                self.stats["silent_sockets_dropped"] += 1
                log.debug("inbound socket sent nothing in %.1f s", limits.first_byte_timeout)
                return
            try:
                with anyio.fail_after(limits.handshake_timeout):
                    upgraded = await upgrade(sock, self.identity, False, None, self.security)
            except TimeoutError:
                self.stats["handshake_timeouts"] += 1
                log.debug("inbound handshake timed out")
                return
            except CONNECTION_ERRORS as exc:
                self.stats["handshake_failures"] += 1
                log.debug("inbound handshake failed: %s: %s", type(exc).__name__, exc)
                return
            if upgraded.remote_peer == self.peer_id:
                self.stats["handshake_failures"] += 1
                log.debug("inbound connection from our own peer id refused")
                return
            try:
                scope.secured(upgraded.remote_peer)
            except ResourceLimitExceeded:
                self.stats["refused_connections"] += 1
                return
            remote_addr = multiaddrs.from_tcp_endpoint(*sock.remote_address)
            conn = self._connection(sock, upgraded, scope, initiator=False, remote_addr=remote_addr)
        finally:
            if conn is None:
                scope.close()
        if self._add_connection(conn) is conn:
            await self._run_connection(conn)
        else:
            await conn.close()

    def _admit_quic(self, remote_ip: str) -> ConnectionScope | None:
        """An Initial from an unknown connection id: may it start a connection?"""
        self.stats["inbound_quic_initials"] += 1
        if self._closing:
            self.stats["refused_connections"] += 1
            return None
        try:
            return self.resources.open_inbound(remote_ip)
        except ResourceLimitExceeded:
            self.stats["refused_connections"] += 1
            return None

    def _on_quic_connection(self, conn: quic.Connection) -> None:
        if self._tg is None or self._closing:
            conn.abort()
            return
        self._tg.start_soon(self._accept_quic, conn)

    async def _accept_quic(self, conn: quic.Connection) -> None:
        try:
            try:
                with anyio.fail_after(self.limits.handshake_timeout):
                    await conn.handshake()
            except TimeoutError:
                self.stats["handshake_timeouts"] += 1
                log.debug("inbound QUIC handshake timed out")
                return
            except CONNECTION_ERRORS as exc:
                self.stats["handshake_failures"] += 1
                log.debug("inbound QUIC handshake failed: %s: %s", type(exc).__name__, exc)
                return
            if conn.remote_peer == self.peer_id:
                self.stats["handshake_failures"] += 1
                log.debug("inbound QUIC connection from our own peer id refused")
                return
            try:
                conn.resources.secured(conn.remote_peer)
            except ResourceLimitExceeded:
                self.stats["refused_connections"] += 1
                return
            if self._add_connection(conn) is conn:
                await self._run_connection(conn)
            else:
                await conn.close()
        except Exception as exc:  # a bug must not take the listener down with it
            self.stats["internal_errors"] += 1
            log.warning("inbound QUIC connection failed unexpectedly: %s: %s", type(exc).__name__, exc)
            log.debug("inbound QUIC connection failure", exc_info=True)
        finally:
            conn.abort()  # a no-op once it closed; else the handshake failed or was refused

    def _connection(
        self, sock: tcp.TcpStream, upgraded: Upgraded, scope: ConnectionScope, *, initiator: bool, remote_addr: Multiaddr
    ) -> Connection:
        return Connection(
            sock,
            upgraded,
            initiator=initiator,
            local_addr=multiaddrs.from_tcp_endpoint(*sock.local_address),
            remote_addr=remote_addr,
            max_streams=self.limits.max_streams_per_connection,
            on_inbound_stream=self._on_inbound_stream,
            resources=scope,
            keepalive_interval=self.limits.keepalive_interval,
            write_timeout=self.limits.write_timeout,
        )

    def _source_host(self, destination: str) -> str | None:
        """The address to dial ``destination`` from: our listen address of the same
        family and reach (loopback or not), as go's reuseport dialer picks it, so the
        remote sees the address we listen on; None to let the system choose."""
        try:
            dest = ipaddress.ip_address(destination)
        except ValueError:
            return None
        for addr in self.listen_addrs:
            host, _ = multiaddrs.endpoint(addr)
            ip = ipaddress.ip_address(host)
            if ip.version == dest.version and not ip.is_unspecified and ip.is_loopback == dest.is_loopback:
                return host
        return None

    # -- connection table --------------------------------------------------------

    def _add_connection(self, conn: MuxedConnection) -> MuxedConnection:
        """Register ``conn``, or return the connection kept instead of it.

        Two connections to one peer happen when both dial at once: both sides keep
        the one dialled by the smaller peer id, so they agree without talking. When
        the same side dialled both (a peer that restarted and dialled again while we
        still hold its old connection), the new one replaces the old.
        """
        peer = conn.remote_peer
        existing = self.connection(peer)
        if existing is not None:
            self.stats["duplicate_connections"] += 1

            def dialer(c: MuxedConnection) -> PeerId:
                return self.peer_id if c.initiator else c.remote_peer

            if dialer(conn) != dialer(existing) and dialer(existing) < dialer(conn):
                return existing
            self.start_soon(existing.close)
        self._connections[peer] = conn
        self.stats["connections_opened"] += 1
        self.stats[f"secured_{_security_label(conn.security)}"] += 1
        if len(self._connections) > self.limits.high_water and not self._trimming:
            self.start_soon(self.trim)
        return conn

    async def _run_connection(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        self.start_soon(self.identify.identify_peer, conn)
        try:
            await conn.run()
        finally:
            if conn.liveness_failure:
                self.stats[conn.liveness_failure] += 1
            if conn.protocol_errors:  # a muxer violation, or (QUIC) data piled up unread
                self.stats["connection_protocol_errors"] += conn.protocol_errors
            if self._connections.get(peer) is conn:
                del self._connections[peer]
                _notify(self._on_disconnect, peer)

    async def trim(self) -> None:
        """If there are more than ``high_water`` connections, close the lowest scored
        down to ``low_water``, in both directions and whatever streams they have open.
        Connections younger than ``idle_grace`` and those to protected or busy peers
        stay. The score: connections we dialled (we chose those peers) above inbound
        ones, then the most recently active first."""
        if self._trimming or len(self._connections) <= self.limits.high_water:
            return
        self._trimming = True
        try:
            now = time.monotonic()
            candidates = sorted(
                (
                    c
                    for c in self._connections.values()
                    if now - c.opened_at > self.limits.idle_grace and not self._protected(c.remote_peer)
                ),
                key=lambda c: (c.initiator, c.last_active),
            )
            excess = len(self._connections) - self.limits.low_water
            for conn in candidates[:excess]:
                self.stats["trimmed_connections"] += 1
                await conn.close()
        finally:
            self._trimming = False

    async def _trim_loop(self) -> None:
        while True:
            await anyio.sleep(self.limits.trim_interval)
            await self.trim()

    # -- inbound streams ---------------------------------------------------------

    async def _on_inbound_stream(self, stream: MuxedStream) -> None:
        current_stream_scope.set(stream.resources)  # this task's: frame decoders reserve from it
        try:
            with anyio.fail_after(self.limits.negotiate_timeout):
                agreed = await negotiate(
                    MultistreamListener(self._handlers.__contains__), stream.send, stream.receive
                )
            handler = self._handlers.get(agreed.protocol)
            if handler is None:  # removed while we negotiated
                await stream.reset()
                return
            stream.resources.set_protocol(agreed.protocol)
            stream.protocol = agreed.protocol
            stream.unread(agreed.leftover)
            await handler(stream)
            stream.discard_input()
            await stream.aclose()
        except TimeoutError:
            self.stats["stream_negotiation_timeouts"] += 1
            await stream.reset()
        except CONNECTION_ERRORS as exc:
            self.stats["stream_errors"] += 1
            log.debug("inbound stream %s from %s: %s: %s", stream.protocol, stream.remote_peer, type(exc).__name__, exc)
            await stream.reset()
        except Exception as exc:  # a handler's bug resets its stream, not the connection
            self.stats["handler_errors"] += 1
            log.warning("handler for %s failed: %s: %s", stream.protocol or "?", type(exc).__name__, exc)
            log.debug("handler failure", exc_info=True)
            await stream.reset()

    def _identified(self, peer: PeerId, info: IdentifyInfo) -> None:
        self.add_addrs(peer, info.listen_addrs)
        _notify(self._on_identify, peer, info)

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a background task in the host's task group (cancelled on close); an
        exception it raises is logged and counted, and does not stop the host."""
        if self._tg is not None and not self._closing:
            self._tg.start_soon(self._guarded, func, *args)

    async def _guarded(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        current_stream_scope.set(None)  # started from a stream's handler, it does not belong to that stream
        try:
            await func(*args)
        except Exception as exc:
            self.stats["internal_errors"] += 1
            log.warning("background task %s failed: %s: %s", getattr(func, "__name__", func), type(exc).__name__, exc)
            log.debug("background task failure", exc_info=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _notify(callbacks: Sequence[Callable[..., object]], *args: Any) -> None:
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:  # a subscriber's bug must not break the connection
            log.warning("callback %r failed", callback, exc_info=True)


def _security_label(protocol_id: str) -> str:
    return "quic" if protocol_id == quic.PROTOCOL_ID else security_name(protocol_id)


def _dialable(addrs: Iterable[bytes]) -> list[bytes]:
    """The /ip4|ip6/…/udp/…/quic-v1 addresses among ``addrs``, then the /ip4|ip6/…/tcp/…
    ones, each in the order given (a /p2p suffix is dropped): QUIC first, as go-libp2p
    ranks it (one round trip to a secured connection, against three over TCP)."""
    quic_addrs: list[bytes] = []
    tcp_addrs: list[bytes] = []
    for raw in addrs:
        try:
            transport, _ = multiaddrs.split_peer_id(multiaddrs.parse(raw))
            multiaddrs.endpoint(transport)
        except multiaddrs.MultiaddrFormatError:
            continue
        out = quic_addrs if multiaddrs.is_quic(transport) else tcp_addrs
        if (b := transport.to_bytes()) not in out:
            out.append(b)
    return quic_addrs + tcp_addrs


def _interface_addresses(unspecified: str) -> list[str]:
    """Loopback plus this machine's addresses of the unspecified address's family."""
    family = socket.AF_INET6 if unspecified == "::" else socket.AF_INET
    found = ["::1" if family == socket.AF_INET6 else "127.0.0.1"]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
    except OSError:
        return found
    for info in infos:
        host = str(info[4][0]).split("%")[0]
        if host not in found:
            found.append(host)
    return found


async def _close_quietly(sock: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await sock.aclose()
        except CONNECTION_ERRORS:
            pass
