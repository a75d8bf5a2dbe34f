"""What a lookup that finds nothing says, on both paths (the router's and the generic
one over ``dht.KadClient``): NotFound, QuorumFailed with the records it got, or
LookupTimeout with what it had learned when its time ran out."""

from __future__ import annotations

import anyio
import pytest

from dhtstore import dht, ipfs
from dhtstore.kadkey import Key
from dhtstore.routing.api import LookupTimeout, NotFound, QuorumFailed, RoutingError
from dhtstore.sim import SequenceValidator, SimConfig, SimNetwork, SimNode
from dhtstore.types import Record

CID = "bafybeihfg3d7rdltd43u3tfvncx7n5loqofbsobojcadtmokrljfthuc7y"
PATHS = ["router", "generic"]




def client(node: SimNode, path: str) -> dht.RecordClient:
    return node.router if path == "router" else node.generic_client()


@pytest.fixture(scope="module")
def net() -> SimNetwork:
    return SimNetwork(SimConfig(nodes=200, seed=41))


def test_the_outcomes_are_routing_errors():
    assert all(issubclass(e, RoutingError) for e in (NotFound, QuorumFailed, LookupTimeout))
    assert dht.NotFound is NotFound and dht.LookupTimeout is LookupTimeout


@pytest.mark.parametrize("path", PATHS)
def test_no_holder_is_not_found(net, path):
    looker = net.node(1)
    key = f"/sim/nobody-has-this/{path}".encode()
    with pytest.raises(NotFound) as caught:
        net.run(dht.get_value, client(looker, path), key)
    assert caught.value.key == key
    absent = SimNetwork(SimConfig(nodes=2, seed=99)).node(0).peer_id  # not in this network
    with pytest.raises(NotFound):
        net.run(dht.find_peer, client(looker, path), absent)
    assert net.run(ipfs.find_providers, client(looker, path), CID) == []  # no providers: an empty list


@pytest.mark.parametrize("path", PATHS)
def test_fewer_valid_holders_than_the_quorum_is_quorum_failed_with_the_records(net, path):
    reader = net.node(2)
    key = f"/sim/three-holders/{path}".encode()
    value = SequenceValidator.encode(7, b"v")
    holders = [net.by_id[p] for p in net.true_closest(Key.for_record(key), 20, exclude=reader.peer_id)]

    async def main() -> QuorumFailed:
        for node in holders[:3]:
            await node.values.put(Record(key, value))
        with pytest.raises(QuorumFailed) as caught:
            await dht.get_value(client(reader, path), key, quorum=5)
        return caught.value

    failed = net.run(main)
    assert failed.quorum == 5 and failed.key == key
    assert [r.value for r in failed.records] == [value] * 3
    # The lookup ran to its end, so its closest peers were corrected all the same.
    assert net.run(dht.get_value, client(reader, path), key, 19).value == value


@pytest.fixture(scope="module")
def silent_net() -> SimNetwork:
    """Every node accepts requests and never answers."""
    return SimNetwork(SimConfig(nodes=60, seed=42, unresponsive=1.0))


@pytest.mark.parametrize("path", PATHS)
def test_a_network_that_never_answers_times_out(silent_net, path):
    looker = silent_net.node(0)

    async def main(call, *args) -> tuple[LookupTimeout, float]:
        started = anyio.current_time()
        with pytest.raises(LookupTimeout) as caught:
            await call(client(looker, path), *args, timeout=3.0)
        return caught.value, anyio.current_time() - started

    for call, args in (
        (dht.get_value, (b"/sim/anything",)),
        (dht.find_peer, (SimNetwork(SimConfig(nodes=2, seed=99)).node(0).peer_id,)),  # not in our table
        (ipfs.find_providers, (CID,)),
    ):
        timed_out, elapsed = silent_net.run(main, call, *args)
        assert elapsed == pytest.approx(3.0)  # the lookup's limit, well before any 10 s request timeout
        assert timed_out.timeout == 3.0 and timed_out.records == () and timed_out.peers == ()


def test_a_timed_out_lookup_carries_what_it_learned():
    # Half the network silent: answers come in fast, but the lookup keeps waiting on
    # silent peers (10 s request timeout) and its 2 s limit passes first.
    net = SimNetwork(SimConfig(nodes=300, seed=43, unresponsive=0.5))
    looker = next(n for n in net.nodes if n.responsive)
    key = b"/sim/half-answered"
    value = SequenceValidator.encode(1)
    live_holders = [net.by_id[p] for p in net.true_closest(Key.for_record(key), 20, exclude=looker.peer_id)]

    provider = next(n for n in net.nodes if n.responsive and n is not looker)
    mh = ipfs.to_multihash(CID)

    async def main() -> tuple[LookupTimeout, LookupTimeout, LookupTimeout]:
        for node in live_holders:
            await node.values.put(Record(key, value))
        assert await provider.router.provide(provider.info, mh) == 20
        with pytest.raises(LookupTimeout) as got:
            await looker.router.get_value(key, timeout=2.0)
        with pytest.raises(LookupTimeout) as providers:
            await looker.router.find_providers(mh, 20, timeout=2.0)
        with pytest.raises(LookupTimeout) as closest:
            await looker.router.find_closest_peers(key, 20, timeout=2.0)
        return got.value, providers.value, closest.value

    got, providers, closest = net.run(main)
    assert got.records and all(r.value == value for r in got.records)
    assert providers.peers == (provider.info,)
    assert closest.peers and all(net.by_id[p.peer_id].responsive for p in closest.peers)
    assert looker.lookups[-1].timed_out and not looker.lookups[-1].completed
