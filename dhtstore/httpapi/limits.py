"""Per-client request rate and lookups in flight: plain bookkeeping, no I/O, no clock
of its own (callers pass ``time.monotonic()``), so tests drive it directly."""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    """A token bucket per client address: ``rate`` tokens a second up to ``burst``.

    At most ``max_clients`` buckets are kept, the least recently seen dropped first; a
    dropped client starts again with a full bucket, so the table cannot grow without
    bound under a flood of addresses."""

    def __init__(self, rate: float, burst: int, max_clients: int):
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def allow(self, client: str, now: float) -> bool:
        tokens, at = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed


class LookupSlots:
    """At most ``limit`` DHT lookups in flight; ``acquire`` does not wait."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0

    def acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1
