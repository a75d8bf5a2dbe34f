"""The node: wires the modules into one running DHT peer with the user-facing calls.

    async with Node.start(NodeOptions(identity=key, store_url=url, mode="server")) as node:
        await node.start_provide(["bafy…"])
        providers = await node.find_providers("bafy…")

What starts, in order, each owned by the node's exit stack and task group: the store
(checked to be at the code's schema revision), the provider store's writer and sweep,
the libp2p host, the routing table (primed from the newest snapshot), the Kademlia
server (server mode only: the kad protocol is neither advertised nor served by a
client), routing-table upkeep (bootstrap, admission, refresh), periodic snapshots, the
peer book (identify info into ``peers``), the value-record sweep and the reprovider (on
a shared PostgreSQL store, every process's reprovider takes its share of the provide
list by claiming slices of the keyspace: ``provider.claims``). Leaving
the ``async with`` writes a final snapshot and stops
everything, with nothing half-written.

Without a ``store_url`` (the one-shot client commands) the stores are in memory and
nothing is persisted.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import anyio
import anyio.abc
from sqlalchemy.ext.asyncio import AsyncEngine

from . import amino, dht, ipfs
from .crypto.keys import PrivateKey
from .data.dialects import is_postgresql
from .data.fastread import Reader, open_reader
from .data.keyfeed import PROVIDED_KEYS, PostgresKeyFeed
from .data.schema import open_store
from .data.stats import store_stats
from .errors import StoreError
from .httpapi.api import LocalRouting
from .httpapi.metrics import HttpCollector
from .httpapi.server import RoutingApi
from .kadkey import Key
from .metrics import Metrics, NodeStats
from .network import api as network
from .network import multiaddrs
from .network.host import DEFAULT_SECURITY, Host, HostLimits
from .network.kadmessenger import LibP2PKadMessenger
from .peerbook import PeerBook
from .peerid import PeerId
from .provider.api import CLAIM_LEASE, AddResult, ProvideEntry, ProvideList, SweepConfig
from .provider.claims import SqlClaimStore
from .provider.listfilter import ProvideListFilter
from .provider.metrics import ProvideMetrics
from .provider.providelist import ProvideListStore
from .provider.reprovider import Reprovider
from .providerstore.api import ProviderQuotas, ProviderStore
from .providerstore.memory import MemoryProviderStore
from .providerstore.sql import SqlProviderStore
from .records.api import ValueStore
from .records.memory import MemoryValueStore
from .records.sql import SqlValueStore
from .records.validators import NamespacedValidator
from .routing.api import LookupStats, Router
from .routing.router import KademliaRouter
from .routingtable.api import KeyShards, RoutingTable
from .routingtable.fulltable import FullTable
from .routingtable.kbuckets import KBucketTable
from .routingtable.snapshots import load_latest_snapshot, save_snapshot
from .rtrefresh.crawler import CRAWL_INTERVAL, Crawler
from .rtrefresh.crawlmetrics import CrawlerCollector
from .rtrefresh.crawlshards import LEASE as CRAWL_LEASE
from .rtrefresh.crawlshards import CrawlShards
from .rtrefresh.upkeep import TableUpkeep
from .server.handler import KademliaHandler
from .server.kadserver import KadServer
from .types import PeerInfo, Record

log = logging.getLogger(__name__)

Mode = Literal["server", "client", "auto"]
RoutingTableKind = Literal["kbuckets", "full"]
STORE_STATS_INTERVAL = 60.0  # seconds between row counts for status and metrics
VALUE_GC_INTERVAL = 24 * 3600.0  # go's ValueGCInterval: drop value records past MAX_RECORD_AGE


@dataclass(frozen=True)
class NodeOptions:
    identity: PrivateKey
    store_url: str | None = None  # None: in-memory stores, nothing persisted
    listen: Sequence[str] = ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1")
    bootstrap: Sequence[str] = ()
    mode: Mode = "server"  # auto: server when we listen on a public address, else client
    protocol: str = amino.PROTOCOL_ID
    allow_private_addrs: bool = False  # LAN and loopback peers in the routing table
    ip_diversity: bool = True
    snapshot_interval: float = 300.0
    limits: HostLimits = field(default_factory=HostLimits)
    security: Sequence[str] = DEFAULT_SECURITY  # "noise", "tls": proposed in this order, both accepted
    provider_quotas: ProviderQuotas = field(default_factory=ProviderQuotas)
    reprovide: bool = True  # run the reprovider on the store's provide list
    reprovide_interval: float = amino.REPROVIDE_INTERVAL.total_seconds()
    claim_lease: float = CLAIM_LEASE  # a dead process's share of a shared list waits this long
    identity_name: str = "default"  # which identity of the data directory, for status and metrics
    # "full": every DHT server of the network (network_peers), kept by the crawler, and
    # one-hop lookups; replaces the k-bucket refresh and the snapshots.
    routing_table: RoutingTableKind = "kbuckets"
    crawl_interval: float = CRAWL_INTERVAL
    crawl_lease: int = CRAWL_LEASE  # heads of a shared store: a stopped head's crawl shards wait this long


class Node:
    def __init__(self, options: NodeOptions, host: network.Host, engine: AsyncEngine | None):
        self.options = options
        self.host = host
        self.engine = engine
        self.peer_id: PeerId = host.peer_id
        self.started_at = time.time()
        self.lookups: Counter[str] = Counter()
        self.last_lookup: dict[str, LookupStats] = {}  # by operation: what the latest one cost
        self.store_rows: dict[str, int] = {}  # refreshed every STORE_STATS_INTERVAL
        self.metrics = Metrics(self.stats)
        self.validator = NamespacedValidator()
        self.messenger = LibP2PKadMessenger(host, [options.protocol])
        self.local = PeerInfo(self.peer_id, tuple(host.advertised_addrs()))
        self.full_table: FullTable | None = None
        # On PostgreSQL several heads may share the store: they split the crawl (crawl shards)
        # and each table reads in the others' rows. SQLite has one head: it crawls everything.
        shared = engine is not None and is_postgresql(engine)
        if options.routing_table == "full":
            self.full_table = FullTable(Key.for_peer(self.peer_id), engine, ip_diversity=options.ip_diversity, shared=shared)
            self.table: RoutingTable = self.full_table
        else:
            self.table = KBucketTable(Key.for_peer(self.peer_id), ip_diversity=options.ip_diversity)
        # The address rule of the DHT we are on: public addresses only on the public
        # DHT, every address on the LAN DHT (and with private addresses allowed).
        self.addr_rule: multiaddrs.AddrRule = multiaddrs.any_addr if options.allow_private_addrs else multiaddrs.public_only
        self.router: Router = KademliaRouter(
            self.local, self.table, self.messenger, self.validator, on_lookup=self._observe, addr_rule=self.addr_rule,
            one_hop_min_peers=amino.BUCKET_SIZE if self.full_table is not None else None,
        )
        self.upkeep = TableUpkeep(
            self.table,
            self.router,
            self.messenger,
            self.peer_id,
            protocols=[options.protocol],
            ping=host.ping,
            connect=self._connect,
            allow_private_addrs=options.allow_private_addrs,
            # the crawler keeps a full table fresh: no k-bucket refresh (it would ping every peer)
            refresh_interval=math.inf if self.full_table is not None else amino.REFRESH_INTERVAL.total_seconds(),
            remote_addr=self._remote_addr,
        )
        self.upkeep.bootstrap_peers = list(options.bootstrap)
        host.on_identify(self.upkeep.on_identify)
        self.crawler: Crawler | None = None
        self.crawl_shards: CrawlShards | None = None
        if self.full_table is not None:
            self.crawler = Crawler(
                self.full_table, self.messenger, interval=options.crawl_interval, usable_addrs=self.upkeep.usable_addrs,
                remote_addr=self._remote_addr,
            )
            if shared:
                assert engine is not None
                self.crawl_shards = CrawlShards(engine, str(self.peer_id), lease=options.crawl_lease)
                self.crawler.shards = self.crawl_shards.held  # none until the first rebalance
            self.metrics.registry.register(CrawlerCollector(self.crawler, str(self.peer_id), options.identity_name))
            table = self.full_table
            host.on_identify(lambda peer, info: table.note_identify(peer, info.agent_version or "", tuple(info.protocols)))
        host.protect_when(self.table.__contains__)  # routing-table members are never trimmed
        # Set in start(): they need the store's lifecycle.
        self.providers: ProviderStore
        self._reader: Reader | None = None
        self.values: ValueStore
        self.handler: KademliaHandler
        self.kadserver: KadServer
        self.reprovider: Reprovider | None = None
        self._own_list: ProvideList | None = None  # the reprovider's, which our GET_PROVIDERS answers for
        self._routing_api: RoutingApi | None = None

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def start(cls, options: NodeOptions) -> AsyncIterator[Node]:
        async with AsyncExitStack() as stack:
            # The stores open before the host listens, and nothing awaits between the
            # host starting and the kad handler being set: a peer that connects as soon
            # as the port is open finds the kad protocol served.
            engine = reader = None
            providers: ProviderStore
            if options.store_url is not None:
                engine = await open_store(options.store_url)
                stack.push_async_callback(engine.dispose)
                reader = await stack.enter_async_context(open_reader(engine))
                providers = await stack.enter_async_context(SqlProviderStore(engine, reader=reader, quotas=options.provider_quotas))
            else:
                providers = MemoryProviderStore(quotas=options.provider_quotas)
            host = await stack.enter_async_context(Host(options.identity, options.listen, limits=options.limits, security=options.security))
            node = cls(options, host, engine)
            node._reader = reader
            node.providers = providers
            node.values = SqlValueStore(engine, node.validator) if engine is not None else MemoryValueStore(node.validator)
            node.handler = KademliaHandler(
                node.local,
                node.table,
                node.providers,
                node.values,
                node.validator,
                address_book=node._served_addrs,
                own_provides=node.provides,
                addr_rule=node.addr_rule,
            )
            node.kadserver = KadServer(host, node.handler, [options.protocol])
            if node.serves_dht:
                node.kadserver.start()
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(node._shutdown, tg)
            await node._start_routing_table(tg)
            await tg.start(node.upkeep.run)
            if engine is not None:
                if node.full_table is None:  # the full table is its own persistence
                    tg.start_soon(node._snapshot_loop)
                tg.start_soon(node._store_stats_loop)
                tg.start_soon(node._value_gc_loop)
                peers = PeerBook(engine)
                host.on_identify(peers.on_identify)
                tg.start_soon(peers.run)
                node._start_reprovider(tg)
            body_error: Exception | None = None
            try:
                yield node
            except Exception as exc:  # re-raised below, not wrapped in the task group's ExceptionGroup
                body_error = exc
        if body_error is not None:
            raise body_error

    async def _start_routing_table(self, tg: anyio.abc.TaskGroup) -> None:
        """The k-bucket table re-checks the newest snapshot's peers; the full table is
        the store's ``network_peers``, loaded as it is (a restarted node routes at once),
        then written through and crawled."""
        if self.full_table is None:
            await self._restore_snapshot()
            return
        if self.engine is not None:
            log.info("loaded %d peers of the full routing table", await self.full_table.load(reader=self._reader))
        tg.start_soon(self.full_table.run)
        assert self.crawler is not None
        if self.crawl_shards is not None:
            crawler = self.crawler

            def crawl(shards: KeyShards) -> None:
                crawler.shards = shards

            tg.start_soon(self.crawl_shards.run, crawl)
        await tg.start(self.crawler.run)

    async def _shutdown(self, tg: anyio.abc.TaskGroup) -> None:
        with anyio.CancelScope(shield=True):
            if self.engine is not None and self.full_table is None:
                try:
                    await self.save_snapshot()
                except Exception as exc:  # the store may be the reason we are stopping
                    log.warning("final routing-table snapshot not written: %s", exc)
        tg.cancel_scope.cancel()

    @property
    def serves_dht(self) -> bool:
        """Server mode. ``auto`` serves on the LAN DHT (where every host is a server) and,
        on the public DHT, only with a public address: an unreachable server would waste
        its peers' lookups (rust-libp2p kad serves only with a confirmed external address,
        go-libp2p-kad-dht's ModeAuto only once reachability says public)."""
        if self.options.mode == "auto":
            return self.options.protocol == amino.LAN_PROTOCOL_ID or any(
                multiaddrs.is_public_addr(a) for a in self.host.advertised_addrs()
            )
        return self.options.mode == "server"

    def _start_reprovider(self, tg: anyio.abc.TaskGroup) -> None:
        """Keep the store's provide list provided: the sweeping reprovider, on this loop,
        once the first bootstrap has ended. Before it, the routing table may be empty and
        every due key would fail its lookup and back off for minutes."""
        if not self.options.reprovide:
            return
        assert self.engine is not None
        # The keys we do not provide (nearly every GET_PROVIDERS) answered from memory; on
        # PostgreSQL the other processes' additions come from a key feed (listfilter).
        feed = PostgresKeyFeed(self.engine.url, PROVIDED_KEYS) if is_postgresql(self.engine) else None
        list_filter = ProvideListFilter(self.engine, self._reader, feed)
        tg.start_soon(list_filter.run)
        self._own_list = ProvideListStore(self.engine, self._reader, list_filter)
        self.reprovider = Reprovider(
            self._own_list,
            SqlClaimStore(self.engine),
            self.router,
            self.messenger,
            self._self_info,
            config=SweepConfig(interval=self.options.reprovide_interval, claim_lease=self.options.claim_lease),
            metrics=ProvideMetrics(self.metrics.registry),
            region_sizes=self.full_table,
        )

        async def run_after_bootstrap() -> None:
            await self.upkeep.bootstrapped.wait()
            assert self.reprovider is not None
            await self.reprovider.run()

        tg.start_soon(run_after_bootstrap)

    async def provides(self, multihash: bytes) -> bool:
        """Whether we provide ``multihash`` ourselves (it is in the list we reprovide), so
        GET_PROVIDERS and the HTTP API answer with us."""
        if self._own_list is None:
            return False
        try:
            return await self._own_list.contains(multihash)
        except StoreError as exc:  # store down: the other providers still answer
            log.debug("provide list unavailable: %s", exc.__class__.__name__)
            return False

    # -- routing table ---------------------------------------------------------------

    def _remote_addr(self, peer: PeerId) -> bytes | None:
        conn = self.host.connection(peer)
        return conn.remote_addr.to_bytes() if conn is not None else None

    def _served_addrs(self, peer: PeerId) -> tuple[bytes, ...]:
        """The addresses of ``peer`` we hand to others. On the public DHT only the ones
        its connection vouches for (its real IP); without a connection none, and the
        server falls back to the table's, checked the same way at admission."""
        addrs = self.addr_rule(self.host.peer_addrs(peer))
        if self.options.allow_private_addrs:
            return addrs
        return multiaddrs.same_ip(addrs, self._remote_addr(peer))

    def _observe(self, stats: LookupStats) -> None:
        self.lookups[stats.operation] += 1
        self.last_lookup[stats.operation] = stats
        self.metrics.lookup_seconds.labels(stats.operation).observe(stats.duration)
        self.metrics.lookup_rounds.labels(stats.operation).observe(stats.rounds)

    async def save_snapshot(self) -> None:
        assert self.engine is not None
        await save_snapshot(self.engine, self.peer_id, self.table.peers())

    async def _snapshot_loop(self) -> None:
        while True:
            await anyio.sleep(self.options.snapshot_interval)
            try:
                with _uninterrupted():
                    await self.save_snapshot()
            except Exception as exc:
                log.warning("routing-table snapshot failed: %s", exc)

    async def _store_stats_loop(self) -> None:
        assert self.engine is not None
        while True:
            await anyio.sleep(STORE_STATS_INTERVAL)
            try:
                with _uninterrupted():
                    self.store_rows = (await store_stats(self.engine)).rows
            except Exception as exc:
                log.warning("store statistics unavailable: %s", exc)

    async def _value_gc_loop(self) -> None:
        """Reads already hide old records; this deletes them, in case nobody reads them."""
        while True:
            await anyio.sleep(VALUE_GC_INTERVAL)
            try:
                with _uninterrupted():
                    removed = await self.values.sweep()
            except Exception as exc:
                log.warning("value-record sweep failed: %s", exc)
            else:
                log.info("value-record sweep removed %d records older than %s", removed, amino.MAX_RECORD_AGE)

    async def _restore_snapshot(self) -> None:
        """Re-check the peers of the newest snapshot: each is dialled (at an address the
        address rule allows), and identify decides (as for any peer) whether it enters
        the table."""
        if self.engine is None:
            return
        loaded = await load_latest_snapshot(self.engine, self.peer_id)
        # A snapshot is only as honest as the table it was taken of (or the store it sits
        # in): its addresses pass the address rule before anything is dialled.
        peers = [PeerInfo(p.peer_id, addrs) for p in loaded if (addrs := self.addr_rule(p.addrs))]
        if len(peers) < len(loaded):
            log.info("dropped %d snapshot peers with no usable address", len(loaded) - len(peers))
        for peer in peers:
            self.host.add_addrs(peer.peer_id, peer.addrs)
        self.upkeep.bootstrap_peers.extend(
            f"{addr}/p2p/{peer.peer_id}" for peer in peers for addr in multiaddrs.printable(peer.addrs[:1])
        )
        if peers:
            log.info("loaded %d peers from the routing-table snapshot", len(peers))

    # -- user-facing calls -----------------------------------------------------------

    # Each lookup raises a routing.api.RoutingError when it finds nothing: NoPeersError,
    # NotFound, QuorumFailed, or LookupTimeout once ``timeout`` seconds have passed.

    async def closest_peers(
        self, key: bytes, n: int = amino.BUCKET_SIZE, *, timeout: float | None = None
    ) -> list[PeerInfo]:
        return await self.router.find_closest_peers(key, n, timeout=timeout)

    async def find_peer(self, peer: PeerId, *, timeout: float | None = None) -> PeerInfo:
        return await dht.find_peer(self.router, peer, timeout=timeout)

    async def find_providers(
        self, cid: str | bytes, count: int = amino.BUCKET_SIZE, *, timeout: float | None = None
    ) -> list[PeerInfo]:
        """Up to ``count`` providers of ``cid``; an empty list when there is none."""
        return await ipfs.find_providers(self.router, cid, count, timeout=timeout)

    async def provide_once(self, cid: str | bytes) -> int:
        """Announce us as a provider of ``cid`` once (not added to the provide list)."""
        return await ipfs.provide(self.router, self._self_info(), cid)

    async def get_value(self, key: bytes, quorum: int = 0, *, timeout: float | None = None) -> Record:
        return await dht.get_value(self.router, key, quorum, timeout=timeout)

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Validate, keep locally, and PUT to the closest peers; returns how many took it."""
        self.validator.validate(key, value)
        await self.values.put(Record(key, value))
        return await dht.set_value(self.router, key, value)

    async def start_provide(self, cids: Iterable[str | bytes]) -> AddResult:
        """Add CIDs to the provide list: stored first, then provided promptly and kept provided."""
        return await self._require_reprovider().start_provide(cids)

    async def stop_provide(self, cids: Iterable[str | bytes]) -> int:
        return await self._require_reprovider().stop_provide(cids)

    def provide_list(self, after: bytes | None = None, limit: int | None = None) -> AsyncIterator[ProvideEntry]:
        return self._require_reprovider().provide_list(after, limit)

    def _require_reprovider(self) -> Reprovider:
        if self.reprovider is None:
            raise RuntimeError("this node has no provide list: start it with a store and reprovide=True")
        return self.reprovider

    def routing_api(self) -> RoutingApi:
        """The Delegated Routing V1 HTTP API over this node (its stores, provide list,
        address book and lookups), its counters in the node's metrics; ``.serve(host,
        port)`` listens until the block ends. One per node."""
        if self._routing_api is None:
            local = LocalRouting(
                providers=self.providers,
                values=self.values,
                validator=self.validator,
                own_provides=self.provides,
                self_info=self._self_info,
                peer_addrs=self.host.peer_addrs,
            )
            self._routing_api = RoutingApi(self, local)
            self.metrics.registry.register(HttpCollector(self._routing_api, str(self.peer_id), self.options.identity_name))
        return self._routing_api

    def addresses(self) -> list[str]:
        """Our listen addresses with ``/p2p/<peer id>``: what others bootstrap from."""
        return [f"{addr}/p2p/{self.peer_id}" for addr in self.host.listen_addrs]

    async def _connect(self, addr: str) -> PeerId:
        return (await self.host.connect(addr)).remote_peer

    def _self_info(self) -> PeerInfo:
        return PeerInfo(self.peer_id, tuple(self.host.advertised_addrs()))

    # -- status ------------------------------------------------------------------------

    def store_state(self) -> str:
        """"up", "down" (the store failed and is not answering yet) or "memory"."""
        if self.engine is None:
            return "memory"
        return "up" if self.providers.available else "down"

    def stats(self) -> NodeStats:
        return NodeStats(
            peer_id=str(self.peer_id),
            identity=self.options.identity_name,
            routing_table=len(self.table),
            connected_peers=len(self.host.connected_peers()),
            requests=dict(self.handler.counters),
            events={**self.host.stats, **self.kadserver.stats},
            store_rows=dict(self.store_rows),
            store=self.store_state(),
            resources=self.host.resource_usage(),
        )

    def status(self) -> dict[str, object]:
        stats = self.stats()
        served: Counter[str] = Counter()
        for (kind, outcome), n in stats.requests.items():
            served[f"{kind.lower()}_{outcome}"] += n
        return {
            "peer_id": stats.peer_id,
            "identity": stats.identity,
            "store": stats.store,
            "mode": "server" if self.serves_dht else "client",
            "reprovider": "active" if self.reprovider else "off",
            "uptime_s": int(time.time() - self.started_at),
            "routing_table": stats.routing_table,
            **({"crawler": self.crawler.status()} if self.crawler is not None else {}),
            "provider_records": stats.store_rows.get("provider_records"),
            "connected_peers": stats.connected_peers,
            "requests": dict(served),
            "lookups": dict(self.lookups),
            "errors": dict(stats.events),
        }


def _uninterrupted() -> anyio.CancelScope:
    """A periodic store query finishes before shutdown proceeds (bounded): a query cut by
    cancellation leaves SQLAlchemy a connection to terminate after the engine is gone."""
    scope = anyio.CancelScope(shield=True)
    scope.deadline = anyio.current_time() + 30
    return scope
