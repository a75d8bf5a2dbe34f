"""The resource manager: what one remote IP, peer, protocol or connection may hold of
the host, modelled on go-libp2p's (p2p/host/resource-manager).

Scopes and what they count:

- system: everything;
- ip: inbound connections from one IPv4 address or IPv6 /64 (go counts per /32 and
  per /56; a /64 is what one IPv6 host is usually given), with their streams and
  memory. Outbound connections are to peers we chose and have no IP scope;
- peer, once a connection is secured: its connections, streams and memory;
- protocol, once a stream's protocol is agreed: its streams and memory, all peers;
- connection and stream: memory.

Resources: connections inbound / outbound / both, inbound connections still in their
handshake, streams inbound / outbound / both, and ``memory``: bytes of incomplete
frames, reserved before a frame body is buffered. A connection is counted from its
first byte (accept, or the start of a dial), so a cap cannot be overshot by handshakes
that finish together.

A reservation takes from the scope and every scope above it, all or nothing; over any
limit it raises ``ResourceLimitExceeded`` (the caller refuses the connection or resets
the stream), counts ``limit_<scope>_<resource>`` in the host's stats, logs at DEBUG, and
at most once a minute logs an INFO summary of the hits since the last one. Closing a
connection or stream scope gives back everything it still holds.

No address is exempt, loopback included: a test on one machine sees what a public
server sees (bind each peer to its own 127.0.0.x, or set limits).
"""

from __future__ import annotations

import collections
import contextvars
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from ..amino import MAX_MESSAGE_SIZE
from ..errors import NetworkError

__all__ = [
    "ConnectionScope",
    "ResourceLimitExceeded",
    "ResourceLimits",
    "ResourceManager",
    "ScopeLimits",
    "StreamScope",
    "current_stream_scope",
    "ip_group",
]

log = logging.getLogger(__name__)

UNLIMITED = 2**62
MiB = 1024 * 1024
SUMMARY_INTERVAL = 60.0  # seconds between INFO summaries of limit hits


class ResourceLimitExceeded(NetworkError):
    """A reservation over a scope's limit: refuse the connection or reset the stream."""


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """The limits of one scope; anything not given is unlimited."""

    inbound_connections: int = UNLIMITED
    outbound_connections: int = UNLIMITED
    connections: int = UNLIMITED
    handshakes: int = UNLIMITED  # inbound connections not yet secured
    inbound_streams: int = UNLIMITED
    outbound_streams: int = UNLIMITED
    streams: int = UNLIMITED
    memory: int = UNLIMITED  # bytes of incomplete frames

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"limit {f.name} must be >= 0")


RESOURCES = tuple(f.name for f in fields(ScopeLimits))


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """The limits of every scope. Defaults are sized for one Python process: about 30
    µs of CPU per small request, so a few thousand streams keep it busy; 128 MiB of
    frames at most, one 4 MiB message per stream, two per connection."""

    system: ScopeLimits = ScopeLimits(
        inbound_connections=512,
        outbound_connections=256,
        connections=768,
        handshakes=64,
        inbound_streams=4096,
        outbound_streams=2048,
        streams=6144,
        memory=128 * MiB,
    )
    ip: ScopeLimits = ScopeLimits(inbound_connections=8, handshakes=8, inbound_streams=512, memory=16 * MiB)
    peer: ScopeLimits = ScopeLimits(
        connections=8, inbound_streams=256, outbound_streams=256, streams=512, memory=16 * MiB
    )
    protocol: ScopeLimits = ScopeLimits(inbound_streams=2048, memory=64 * MiB)
    connection: ScopeLimits = ScopeLimits(memory=2 * MAX_MESSAGE_SIZE)
    stream: ScopeLimits = ScopeLimits(memory=MAX_MESSAGE_SIZE)

    @classmethod
    def from_config(cls, section: object) -> ResourceLimits:
        """From a config.toml ``[limits]`` table: ``{scope: {resource: n}}``, each given
        value replacing that default. ValueError names a key that is not a limit."""
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ValueError("[limits] must be a table of scopes")
        defaults = cls()
        scopes: dict[str, ScopeLimits] = {}
        for scope, values in section.items():
            if scope not in SCOPES:
                raise ValueError(f"[limits.{scope}]: no such scope (use {', '.join(SCOPES)})")
            if not isinstance(values, dict):
                raise ValueError(f"[limits.{scope}] must be a table of limits")
            unknown = set(values) - set(RESOURCES)
            if unknown:
                raise ValueError(f"[limits.{scope}]: no such limit {sorted(unknown)} (use {', '.join(RESOURCES)})")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
                raise ValueError(f"[limits.{scope}]: limits are integers")
            scopes[scope] = ScopeLimits(**{**asdict(getattr(defaults, scope)), **values})
        return cls(**{**{s: getattr(defaults, s) for s in SCOPES}, **scopes})


SCOPES = tuple(f.name for f in fields(ResourceLimits))


def ip_group(host: str) -> str:
    """The IP scope of a remote address: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(eq=False, slots=True)
class _Scope:
    kind: str
    name: str
    limits: dict[str, int]
    used: collections.Counter[str] = field(default_factory=collections.Counter)
    users: int = 0  # connection and stream scopes below it still open


class ResourceManager:
    """The scopes of one host. ``stats`` receives the limit-hit counters."""

    def __init__(
        self,
        limits: ResourceLimits = ResourceLimits(),
        stats: collections.Counter[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = limits
        self.stats = stats if stats is not None else collections.Counter()
        self._clock = clock
        self._limit_dicts = {scope: asdict(getattr(limits, scope)) for scope in SCOPES}
        self.system = _Scope("system", "system", self._limit_dicts["system"])
        self._shared: dict[tuple[str, str], _Scope] = {}  # (kind, name) -> ip, peer and protocol scopes
        self._hits_since_summary: collections.Counter[str] = collections.Counter()
        self._last_summary = clock()

    # -- what callers open -----------------------------------------------------

    def open_inbound(self, remote_ip: str) -> ConnectionScope:
        """An accepted socket, in its handshake until ``secured``. Raises ResourceLimitExceeded."""
        ip = self._acquire_shared("ip", ip_group(remote_ip))
        scope = ConnectionScope(self, inbound=True, ip=ip)
        try:
            self.reserve(scope.scopes(), "inbound_connections", 1)
            self.reserve(scope.scopes(), "connections", 1)
            scope.in_handshake = True
            self.reserve(scope.scopes(), "handshakes", 1)
        except ResourceLimitExceeded:
            scope.close()
            raise
        return scope

    def open_outbound(self) -> ConnectionScope:
        """A dial about to start. Raises ResourceLimitExceeded."""
        scope = ConnectionScope(self, inbound=False, ip=None)
        try:
            self.reserve(scope.scopes(), "outbound_connections", 1)
            self.reserve(scope.scopes(), "connections", 1)
        except ResourceLimitExceeded:
            scope.close()
            raise
        return scope

    def usage(self, kind: str = "system", name: str = "system") -> dict[str, int]:
        """What a scope holds now (empty when it holds nothing), for tests and status."""
        scope = self.system if kind == "system" else self._shared.get((kind, name))
        return {k: v for k, v in scope.used.items() if v} if scope is not None else {}

    # -- reservations ------------------------------------------------------------

    def reserve(self, scopes: list[_Scope], resource: str, n: int) -> None:
        for scope in scopes:
            if scope.used[resource] + n > scope.limits[resource]:
                self._hit(scope, resource, n)
        for scope in scopes:
            scope.used[resource] += n

    def release(self, scopes: list[_Scope], resource: str, n: int) -> None:
        for scope in scopes:
            scope.used[resource] -= n

    def _hit(self, scope: _Scope, resource: str, n: int) -> None:
        counter = f"limit_{scope.kind}_{resource}"
        self.stats[counter] += 1
        self._hits_since_summary[counter] += 1
        log.debug("resource limit: %s %s %s: %d + %d > %d", scope.kind, scope.name, resource, scope.used[resource], n, scope.limits[resource])
        now = self._clock()
        if now - self._last_summary >= SUMMARY_INTERVAL:
            summary = ", ".join(f"{k}={v}" for k, v in sorted(self._hits_since_summary.items()))
            log.info("resource limits hit in the last %.0f s: %s", now - self._last_summary, summary)
            self._hits_since_summary.clear()
            self._last_summary = now
        raise ResourceLimitExceeded(f"{scope.kind} {scope.name}: {resource} limit of {scope.limits[resource]} reached")

    # -- shared scopes, kept while something uses them ---------------------------

    def _acquire_shared(self, kind: str, name: str) -> _Scope:
        scope = self._shared.get((kind, name))
        if scope is None:
            scope = self._shared[(kind, name)] = _Scope(kind, name, self._limit_dicts[kind])
        scope.users += 1
        return scope

    def _release_shared(self, scope: _Scope) -> None:
        scope.users -= 1
        if scope.users == 0:
            del self._shared[(scope.kind, scope.name)]


class ConnectionScope:
    """What one connection holds. ``close`` gives it all back, its streams' too (idempotent)."""

    def __init__(self, manager: ResourceManager, *, inbound: bool, ip: _Scope | None):
        self._manager = manager
        self.inbound = inbound
        self.in_handshake = False
        self._own = _Scope("connection", "", manager._limit_dicts["connection"])
        self._ip = ip
        self._peer: _Scope | None = None
        self._streams: set[StreamScope] = set()
        self.closed = False

    def scopes(self) -> list[_Scope]:
        """This connection's scope and every one above it."""
        chain = [self._own]
        if self._peer is not None:
            chain.append(self._peer)
        if self._ip is not None:
            chain.append(self._ip)
        chain.append(self._manager.system)
        return chain

    def secured(self, peer: object) -> None:
        """The handshake is done and the remote is ``peer``. Raises ResourceLimitExceeded
        when the peer already has as many connections as it may."""
        manager = self._manager
        if self.in_handshake:
            self.in_handshake = False
            manager.release(self.scopes(), "handshakes", 1)
        peer_scope = manager._acquire_shared("peer", str(peer))
        try:
            _reserve_pair(manager, [peer_scope], "inbound_connections" if self.inbound else "outbound_connections", "connections")
        except ResourceLimitExceeded:
            manager._release_shared(peer_scope)
            raise
        self._peer = peer_scope

    def open_stream(self, inbound: bool) -> StreamScope:
        """A new stream on this connection. Raises ResourceLimitExceeded."""
        if self.closed:
            raise ResourceLimitExceeded("connection scope is closed")
        stream = StreamScope(self, inbound)
        _reserve_pair(self._manager, stream.chain[2:], stream.direction, "streams")
        self._streams.add(stream)
        return stream

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self._streams):
            stream.close()
        manager = self._manager
        above = self.scopes()[1:]
        for resource, n in self._own.used.items():
            if n:
                manager.release(above, resource, n)
        self._own.used.clear()
        for shared in (self._peer, self._ip):
            if shared is not None:
                manager._release_shared(shared)
        self._peer = self._ip = None


class StreamScope:
    """What one stream holds: its place in the stream counts and its frame memory."""

    def __init__(self, connection: ConnectionScope, inbound: bool):
        self._connection = connection
        self._manager = connection._manager
        self.inbound = inbound
        self.direction = "inbound_streams" if inbound else "outbound_streams"
        self._own = _Scope("stream", "", self._manager._limit_dicts["stream"])
        # stream, connection, [peer], [ip], system, then the protocol once agreed
        self.chain = [self._own, *connection.scopes()]
        self._protocol: _Scope | None = None
        self.closed = False

    @property
    def memory(self) -> int:
        return self._own.used["memory"]

    def set_protocol(self, protocol: str) -> None:
        """The stream's protocol is agreed: count it there. Raises ResourceLimitExceeded."""
        if self._protocol is not None or self.closed:
            return
        scope = self._manager._acquire_shared("protocol", protocol)
        try:
            _reserve_pair(self._manager, [scope], self.direction, "streams")
        except ResourceLimitExceeded:
            self._manager._release_shared(scope)
            raise
        self._protocol = scope
        self.chain.append(scope)

    def reserve_memory(self, n: int) -> None:
        """Take ``n`` bytes before buffering them. Raises ResourceLimitExceeded."""
        if self.closed:
            raise ResourceLimitExceeded("stream scope is closed")
        self._manager.reserve(self.chain, "memory", n)

    def release_memory(self, n: int) -> None:
        if not self.closed:
            self._manager.release(self.chain, "memory", min(n, self.memory))

    def close(self) -> None:
        if self.closed:
            return
        self.release_memory(self.memory)
        self.closed = True
        manager = self._manager
        counted = self.chain[2:]  # the stream and connection scopes count no streams
        manager.release(counted, self.direction, 1)
        manager.release(counted, "streams", 1)
        self._connection._streams.discard(self)
        if self._protocol is not None:
            manager._release_shared(self._protocol)


def _reserve_pair(manager: ResourceManager, scopes: list[_Scope], first: str, second: str) -> None:
    """Reserve one of ``first`` and one of ``second`` (a direction and the total), or neither."""
    manager.reserve(scopes, first, 1)
    try:
        manager.reserve(scopes, second, 1)
    except ResourceLimitExceeded:
        manager.release(scopes, first, 1)
        raise


# The scope of the inbound stream whose handler is running: a frame decoder made inside
# a handler reserves its frame memory there (the host sets it per handler task).
current_stream_scope: contextvars.ContextVar[StreamScope | None] = contextvars.ContextVar(
    "current_stream_scope", default=None
)
