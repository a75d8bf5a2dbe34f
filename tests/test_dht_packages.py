"""The dht and ipfs algorithm packages: each free function takes the specialised path
when the object has the method, and the generic one on what ``dht.KadClient`` gives
(find_closest_peers, request, send; and the validator for records) otherwise."""

import pytest

from dhtstore import dht, ipfs
from dhtstore.kadkey import Key
from dhtstore.sim import SequenceValidator, SimConfig, SimNetwork
from dhtstore.types import Record

CID = "bafybeihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y"




@pytest.fixture(scope="module")
def net() -> SimNetwork:
    return SimNetwork(SimConfig(nodes=200, seed=21))


def operations(node) -> list[str]:
    return [s.operation for s in node.lookups]


def test_protocols_are_recognised(net):
    router = net.node(0).router
    richer = (dht.FindPeerDHT, dht.ValueDHT, dht.FeaturePeersDHT, ipfs.FindProvidersDHT, ipfs.ProvideDHT)
    assert all(isinstance(router, p) for p in (dht.DHT, *richer))
    plain = net.node(0).generic_client()
    assert isinstance(plain, dht.RecordClient) and not any(isinstance(plain, p) for p in richer)


@pytest.mark.parametrize("generic", [False, True])
def test_find_peer(net, generic):
    looker = net.node(1)
    target = next(n for n in net.nodes[100:] if n.peer_id not in looker.table)  # needs a lookup
    t = looker.generic_client() if generic else looker.router
    assert net.run(dht.find_peer, t, target.peer_id) == target.info
    assert operations(looker)[-1] == ("find_closest_peers" if generic else "find_peer")


@pytest.mark.parametrize("generic", [False, True])
def test_set_and_get_value_with_entry_correction(generic):
    net = SimNetwork(SimConfig(nodes=200, seed=22))
    writer, reader = net.node(3), net.node(4)
    key = b"/sim/both-paths"
    old, new = SequenceValidator.encode(1), SequenceValidator.encode(2)
    holders = [net.by_id[p] for p in net.true_closest(Key.for_record(key), 20, exclude=reader.peer_id)]

    def dht_of(node):
        return node.generic_client() if generic else node.router

    async def main():
        assert await dht.set_value(dht_of(writer), key, old) >= 19
        for node in holders[:3]:
            await node.values.put(Record(key, new))
        return await dht.get_value(dht_of(reader), key, 0)

    record = net.run(main)
    assert record is not None and record.value == new
    assert operations(reader)[-1] == ("find_closest_peers" if generic else "get_value")

    async def held():
        return [(await node.values.get(key)).value for node in holders]

    assert net.run(held).count(new) >= 19  # entry correction spread the newest


@pytest.mark.parametrize("generic", [False, True])
def test_provide_and_find_providers(net, generic):
    provider, seeker = net.node(10), net.node(90)
    def dht_of(node):
        return node.generic_client() if generic else node.router

    async def main():
        assert await ipfs.provide(dht_of(provider), provider.info, CID) == 20
        return await ipfs.find_providers(dht_of(seeker), CID, 5)

    found = net.run(main)
    assert found == [provider.info]
    assert operations(seeker)[-1] == ("find_closest_peers" if generic else "find_providers")


@pytest.mark.parametrize("generic", [False, True])
def test_find_feature_peers(net, generic):
    announcers = [net.node(i) for i in (20, 21, 22)]
    seeker = net.node(60)
    feature = f"/my-app/relay/{generic}"

    async def main():
        for node in announcers:
            await ipfs.provide(node.router, node.info, dht.feature_key(feature))
        if generic:
            return await dht.find_feature_peers(seeker.generic_client(), feature, 10)
        return await dht.find_feature_peers(seeker.router, feature, 10)

    assert {p.peer_id for p in net.run(main)} == {n.peer_id for n in announcers}


def test_cid_forms_meet_at_the_same_multihash():
    from dhtstore import multihash

    mh = multihash.from_cid(CID)
    assert ipfs.to_multihash(CID) == ipfs.to_multihash(mh) == mh
    with pytest.raises(multihash.MultihashError):
        ipfs.to_multihash("not a cid")


def test_the_router_implements_the_routing_api(net):
    from dhtstore.routing.api import Router

    assert isinstance(net.node(0).router, Router)
