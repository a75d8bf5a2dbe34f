"""Generic DHT algorithms as free functions over a minimal interface (Go's ``io/fs`` idea).

``KadClient`` is ``find_closest_peers(key, n)`` plus ``request``/``send`` to a peer
(``network.api.KadMessenger``); ``RecordClient`` adds the record ``validator``.
``find_peer``, ``get_value``, ``set_value`` and ``find_feature_peers`` call the
specialised method when the object implements ``FindPeerDHT`` / ``ValueDHT`` /
``FeaturePeersDHT`` (runtime-checkable Protocols), and otherwise run the generic
algorithm on what ``KadClient`` gives:

    from dhtstore import dht
    record = await dht.get_value(router, b"/ipns/…", quorum=16, timeout=30)

The building blocks are public too, and ``routing.router`` builds on them, so both
paths follow one rule each: one message to many peers (``ask_each``, ``put_record``,
``send_each``), and what the replies make (``ValueSearch``, ``ProviderSet``, and
``correct_holders``, the stale-holder update).

A lookup that finds nothing raises ``NotFound``, ``QuorumFailed`` or ``LookupTimeout``
(all ``RoutingError``). ``routing.router.KademliaRouter`` implements every Protocol
here and in ``dhtstore.ipfs``.
"""

from .fanout import ReplyHandler, ask_each, correct_holders, put_record, send_each
from .functions import (
    deadline_after,
    feature_key,
    find_feature_peers,
    find_peer,
    get_value,
    providers_near,
    set_value,
)
from .protocols import (
    DHT,
    FeaturePeersDHT,
    FindPeerDHT,
    KadClient,
    LookupTimeout,
    NotFound,
    QuorumFailed,
    RecordClient,
    RoutingError,
    ValueDHT,
)
from .results import ProviderSet, ValueSearch, is_valid_peer_id

__all__ = [
    "DHT",
    "FeaturePeersDHT",
    "FindPeerDHT",
    "KadClient",
    "LookupTimeout",
    "NotFound",
    "ProviderSet",
    "QuorumFailed",
    "RecordClient",
    "ReplyHandler",
    "RoutingError",
    "ValueDHT",
    "ValueSearch",
    "ask_each",
    "correct_holders",
    "deadline_after",
    "feature_key",
    "find_feature_peers",
    "find_peer",
    "get_value",
    "is_valid_peer_id",
    "providers_near",
    "put_record",
    "send_each",
    "set_value",
]
