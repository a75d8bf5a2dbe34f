"""Generic DHT algorithms as free functions over a minimal interface (Go's ``io/fs`` idea).

``DHT`` has one method, ``find_closest_peers(key, n)``. ``find_peer``, ``get_value``,
``set_value`` and ``find_feature_peers`` call the specialised method when the object
implements ``FindPeerDHT`` / ``ValueDHT`` / ``FeaturePeersDHT`` (runtime-checkable
Protocols), and otherwise run the generic algorithm on ``find_closest_peers``, talking
to the peers it returns through the ``messenger=`` they are given:

    from dhtstore import dht
    record = await dht.get_value(router, b"/ipns/…", quorum=16)          # fast path
    record = await dht.get_value(closest_only, key, messenger=m, validator=v)  # generic

``routing.router.KademliaRouter`` implements every Protocol here and in ``dhtstore.ipfs``.
"""

from .functions import (
    feature_key,
    find_feature_peers,
    find_peer,
    get_value,
    providers_near,
    set_value,
)
from .protocols import DHT, FeaturePeersDHT, FindPeerDHT, ValueDHT

__all__ = [
    "DHT",
    "FeaturePeersDHT",
    "FindPeerDHT",
    "ValueDHT",
    "feature_key",
    "find_feature_peers",
    "find_peer",
    "get_value",
    "providers_near",
    "set_value",
]
