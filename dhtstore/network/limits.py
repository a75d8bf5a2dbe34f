"""Limits of the host (its connection manager, timeouts and resource limits), and the
per-peer request rate limiter of the kad server.

Defaults follow go-libp2p's connection manager where it has one (low/high water, a
grace period for new connections), go-yamux's keep-alive and write timeout, and are
sized for one process on a small machine.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields, replace

import anyio

from .connection import KEEPALIVE_INTERVAL, WRITE_TIMEOUT
from .resources import SCOPES, ResourceLimits

# Seconds for one dial: TCP connect, then the Noise and muxer handshakes (go-libp2p's
# swarm dial timeout).
DIAL_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class HostLimits:
    high_water: int = 384  # above this many connections, the lowest scored are closed ...
    low_water: int = 256  # ... down to this
    idle_grace: float = 30.0  # a connection younger than this is never trimmed
    trim_interval: float = 10.0
    first_byte_timeout: float = 3.0  # an inbound socket silent this long is dropped
    handshake_timeout: float = 10.0  # TCP accept to muxer ready
    dial_timeout: float = DIAL_TIMEOUT  # per address
    max_streams_per_connection: int = 128  # open yamux streams, both directions
    negotiate_timeout: float = 10.0  # multistream-select on one stream
    keepalive_interval: float = KEEPALIVE_INTERVAL  # ping after this long with nothing received
    write_timeout: float = WRITE_TIMEOUT  # for the pong, or for a full write buffer to drain
    resources: ResourceLimits = ResourceLimits()  # connections, streams and memory by scope

    def __post_init__(self) -> None:
        if not 0 <= self.low_water <= self.high_water:
            raise ValueError("need 0 <= low_water <= high_water")

    @classmethod
    def from_config(cls, section: object) -> HostLimits:
        """From config.toml's ``[limits]`` table: the keys above (but ``resources``), and
        a table per resource scope (``[limits.ip]`` ...; see ``ResourceLimits.from_config``).
        ValueError names what is wrong."""
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ValueError("[limits] must be a table")
        scalars = {f.name: f.type for f in fields(cls) if f.name != "resources"}
        unknown = set(section) - set(scalars) - set(SCOPES)
        if unknown:
            raise ValueError(f"[limits]: no such key {sorted(unknown)} (use {', '.join(scalars)}, or a table per scope)")
        given = {k: v for k, v in section.items() if k in scalars}
        for key, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"[limits] {key} must be a number >= 0")
            if scalars[key] == "int" and not isinstance(value, int):
                raise ValueError(f"[limits] {key} must be an integer")
        resources = ResourceLimits.from_config({k: v for k, v in section.items() if k in SCOPES})
        return replace(cls(), **given, resources=resources)


class PeerRateLimiter:
    """A token bucket per peer: ``rate`` requests per second, bursts up to ``burst``.

    ``acquire`` waits for the peer's next token, so a flooding peer is slowed to
    ``rate`` (its requests queue in its own stream) while every other peer keeps its
    own budget. Buckets of at most ``max_peers`` peers are kept, least recently used
    evicted (an evicted peer starts again with a full bucket).
    """

    def __init__(
        self, rate: float = 200.0, burst: float = 400.0, max_peers: int = 4096, clock: Callable[[], float] = time.monotonic
    ):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._max_peers = max_peers
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # peer -> (tokens, at)
        self.throttled = 0  # requests that had to wait

    def delay(self, peer: Hashable) -> float:
        """Take one token for ``peer``; return how long the caller must wait before using it."""
        now = self._clock()
        tokens, at = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate) - 1
        self._buckets[peer] = (tokens, now)
        if len(self._buckets) > self._max_peers:
            self._buckets.popitem(last=False)
        if tokens >= 0:
            return 0.0
        self.throttled += 1
        return -tokens / self.rate

    async def acquire(self, peer: Hashable) -> None:
        wait = self.delay(peer)
        if wait > 0:
            await anyio.sleep(wait)

    def forget(self, peer: Hashable) -> None:
        self._buckets.pop(peer, None)

