"""What the HTTP routing server needs from a node, and its settings.

The server depends on these Protocols only: ``node.Node`` satisfies ``NetworkRouting``
with its user-facing lookups, and the store-side answers come from the stores' own
Protocols (``providerstore.api.ProviderStore``, ``records.api.ValueStore``) plus two
callables, so neither ``node.py`` nor any store implementation is imported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..peerid import PeerId
from ..providerstore.api import ProviderStore
from ..records.api import Validator, ValueStore
from ..types import PeerInfo, Record


class NetworkRouting(Protocol):
    """DHT lookups, each ending on its own (the server bounds them with a timeout)."""

    async def find_providers(self, cid: bytes, count: int) -> list[PeerInfo]:
        """Up to ``count`` providers of the multihash ``cid``."""
        ...

    async def find_peer(self, peer: PeerId) -> PeerInfo:
        """The peer's addresses; raises ``routing.api.NotFound`` (a RoutingError) when no one knows it."""
        ...

    async def get_value(self, key: bytes, quorum: int = 0) -> Record:
        """The best valid record; raises ``routing.api.NotFound`` when there is none."""
        ...

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Validate, keep locally and PUT to the closest peers; returns how many took it."""
        ...


@dataclass(frozen=True)
class LocalRouting:
    """The node's own knowledge, asked before the network.

    ``own_provides(multihash)``: whether the node itself provides it (its provide list);
    ``self_info()``: the node's peer id and addresses; ``peer_addrs(peer)``: the
    addresses the node's address book holds for a peer.
    """

    providers: ProviderStore
    values: ValueStore
    validator: Validator
    own_provides: Callable[[bytes], Awaitable[bool]]
    self_info: Callable[[], PeerInfo]
    peer_addrs: Callable[[PeerId], tuple[bytes, ...]]


@dataclass(frozen=True)
class HttpLimits:
    """Per-client request rate (a token bucket per client address), lookups in flight
    (a request that would start one more waits for none: it gets 503), request body
    size, and how long one DHT lookup may take."""

    rate: float = 20.0  # requests per second and client address
    burst: int = 40
    max_lookups: int = 32
    max_body: int = 10 * 1024  # an IPNS record is at most 10 KiB (ipns-record spec)
    lookup_timeout: float = 30.0  # boxo's DefaultRoutingTimeout
    max_clients: int = 65536  # client addresses whose buckets are remembered
    json_limit: int = 100  # the spec: application/json responses SHOULD hold at most 100


class HttpCounters(Protocol):
    """What the server counts, for metrics: requests by (endpoint, outcome)."""

    def requests(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def lookups_in_flight(self) -> int: ...
