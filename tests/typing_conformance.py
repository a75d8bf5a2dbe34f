"""Each implementation pinned to the Protocol it implements, checked by ``mypy --strict``
(``.ci/run`` and ``tests/test_typing.py``): go's ``var _ ProviderStore = (*ProviderManager)(nil)``.

A function per pair, returning the implementation as its Protocol: if an implementation
drifts from its Protocol (a method renamed, a parameter or return type changed), mypy
reports the ``return`` line here. Nothing here runs.
"""

from __future__ import annotations

from dhtstore import dht, ipfs
from dhtstore.network import api as network
from dhtstore.network import connection, quic
from dhtstore.network.api import KadMessenger
from dhtstore.network.host import Host
from dhtstore.network.kadmessenger import LibP2PKadMessenger
from dhtstore.network.muxed import MuxedConnection
from dhtstore.network.noise import NoiseHandshake, NoiseTransport
from dhtstore.network.security import SecureHandshake, SecureTransport
from dhtstore.network.tls import TlsHandshake, TlsTransport
from dhtstore.provider.api import ClaimStore, ProvideList, Provider
from dhtstore.provider.claims import SqlClaimStore
from dhtstore.provider.memory import MemoryClaimStore, MemoryProvideList
from dhtstore.provider.providelist import ProvideListStore
from dhtstore.provider.reprovider import Reprovider
from dhtstore.provider.service import ProvideListService
from dhtstore.providerstore.api import ProviderStore
from dhtstore.providerstore.memory import MemoryProviderStore
from dhtstore.providerstore.sql import SqlProviderStore
from dhtstore.records.api import Validator, ValueStore
from dhtstore.records.memory import MemoryValueStore
from dhtstore.records.sql import SqlValueStore
from dhtstore.records.validators import NamespacedValidator
from dhtstore.routing.api import Router
from dhtstore.routing.router import KademliaRouter
from dhtstore.routingtable.api import NetworkTable, RoutingTable
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.routingtable.kbuckets import KBucketTable
from dhtstore.server.api import RequestHandler
from dhtstore.server.handler import KademliaHandler
from dhtstore.sim import SequenceValidator, SimMessenger


def routing_table(impl: KBucketTable) -> RoutingTable:
    return impl


def routing_table_full(impl: FullTable) -> RoutingTable:
    return impl


def network_table(impl: FullTable) -> NetworkTable:
    return impl


def host(impl: Host) -> network.Host:
    return impl


def muxed_yamux(impl: connection.Connection) -> MuxedConnection:
    return impl


def muxed_quic(impl: quic.Connection) -> MuxedConnection:
    return impl


def peer_connection_quic(impl: quic.Connection) -> network.PeerConnection:
    return impl


def stream_quic(impl: quic.Stream) -> network.Stream:
    return impl


def handshake_noise(impl: NoiseHandshake) -> SecureHandshake:
    return impl


def handshake_tls(impl: TlsHandshake) -> SecureHandshake:
    return impl


def transport_noise(impl: NoiseTransport) -> SecureTransport:
    return impl


def transport_tls(impl: TlsTransport) -> SecureTransport:
    return impl


def messenger_libp2p(impl: LibP2PKadMessenger) -> KadMessenger:
    return impl


def messenger_sim(impl: SimMessenger) -> KadMessenger:
    return impl


def provider_store_sql(impl: SqlProviderStore) -> ProviderStore:
    return impl


def provider_store_memory(impl: MemoryProviderStore) -> ProviderStore:
    return impl


def value_store_sql(impl: SqlValueStore) -> ValueStore:
    return impl


def value_store_memory(impl: MemoryValueStore) -> ValueStore:
    return impl


def validator_namespaced(impl: NamespacedValidator) -> Validator:
    return impl


def validator_sequence(impl: SequenceValidator) -> Validator:
    return impl


def request_handler(impl: KademliaHandler) -> RequestHandler:
    return impl


def router(impl: KademliaRouter) -> Router:
    return impl


def router_as_dht(impl: KademliaRouter) -> dht.DHT:
    return impl


def router_as_providers_dht(impl: KademliaRouter) -> ipfs.FindProvidersDHT:
    return impl


def provide_list_sql(impl: ProvideListStore) -> ProvideList:
    return impl


def provide_list_memory(impl: MemoryProvideList) -> ProvideList:
    return impl


def claims_sql(impl: SqlClaimStore) -> ClaimStore:
    return impl


def claims_memory(impl: MemoryClaimStore) -> ClaimStore:
    return impl


def provider_service(impl: ProvideListService) -> Provider:
    return impl


def provider_reprovider(impl: Reprovider) -> Provider:
    return impl
