"""Amino DHT constants, as go-libp2p-kad-dht's amino/defaults.go and the specs set them.

One place for every protocol number, so a reviewer can check them against
go-libp2p-kad-dht (``amino/defaults.go``, ``dht_options.go``, ``internal/net``) and the
libp2p kad-dht spec in one read.
"""

from datetime import timedelta

PROTOCOL_ID = "/ipfs/kad/1.0.0"
LAN_PROTOCOL_ID = "/ipfs/lan/kad/1.0.0"

BUCKET_SIZE = 20  # k: bucket size, replication factor, peers per response
CONCURRENCY = 10  # α: requests in flight per lookup
RESILIENCY = 3  # β: closest answered peers that must be queried to terminate

PROVIDE_VALIDITY = timedelta(hours=48)
PROVIDER_ADDR_TTL = timedelta(hours=24)
REPROVIDE_INTERVAL = timedelta(hours=22)
MAX_RECORD_AGE = timedelta(hours=48)
PROVIDER_GC_INTERVAL = timedelta(hours=1)

MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # go-libp2p network.MessageSizeMax
MAX_PEER_RECORD_SIZE = 8 * 1024  # one Message.Peer, addresses dropped past it
MAX_CLOSER_PEERS = 2 * BUCKET_SIZE  # closer peers taken from one response
MAX_PROVIDER_KEY_BYTES = 80  # a provider record's key: a multihash of at most this (go's handleAddProvider)

READ_MESSAGE_TIMEOUT = 10.0  # seconds, a response to a request
STREAM_IDLE_TIMEOUT = 60.0  # an idle inbound kad stream is reset
PUT_OPERATION_TIMEOUT = 30.0  # per-peer PUT_VALUE / ADD_PROVIDER of one lookup's fan-out (the router)
# Per ADD_PROVIDER (and the FIND_NODE confirming them) of the sweeping provider: Kubo's default
# Provide.DHT.SendProviderRecordTimeout (10 s), which it hands to go-libp2p-kad-dht's
# SweepingProvider (provider.WithSendProviderRecordTimeout). Shorter than the router's:
# the sweep sends a peer thousands of records one after the other and gives the peer up
# after a few failures, so a dead peer must not hold a sending slot for long; the router
# sends one record to each peer, all at once.
SWEEP_SEND_TIMEOUT = 10.0

MAX_PEERS_PER_IP_GROUP = 3
MAX_PEERS_PER_IP_GROUP_PER_CPL = 2

REFRESH_INTERVAL = timedelta(minutes=10)
REFRESH_QUERY_TIMEOUT = 10.0
REFRESH_PING_TIMEOUT = 10.0  # dial + ping of a table peer during refresh (go's peerPingTimeout)

MAX_IPNS_RECORD_SIZE = 10 * 1024
