"""An in-process Kademlia network on virtual time, for tests and benchmarks.

Every node runs the real code (``routingtable.kbuckets.KBucketTable``,
``routing.router.KademliaRouter``, ``server.handler.KademliaHandler``); only the
transport is simulated: messages are the ``dhtstore.types`` dataclasses handed from one
node's messenger to another node's handler after a random latency. Time is virtual
(``clock.VirtualTimeLoop``), so timeouts cost nothing and a run is reproducible: the
same config and seed give the same messages in the same order.

    from dhtstore.sim import SimConfig, SimNetwork

    net = SimNetwork(SimConfig(nodes=1000, seed=7, latency=(0.01, 0.1), loss=0.01,
                               unresponsive=0.1))
    node = net.node(0)            # .router (routing.api.Router: dht.KadClient, ValueDHT, …),
                                  # .messenger (KadMessenger), .table, .handler,
                                  # .providers, .values, .lookups (LookupStats list)
    node.generic_client()         # a bare dht.RecordClient: the free functions' generic path

    async def main():
        peers = await node.router.find_closest_peers(b"some key", 20)
        await anyio.sleep(3600)   # an hour of virtual time, instantly
        return peers

    peers = net.run(main)         # virtual time goes on from the previous run
    net.run(anyio.sleep, 22 * 3600)   # advance the clock: stored records age
    net.now()                     # virtual seconds since the network was built
    net.true_closest(Key.hash(b"some key"), exclude=node.peer_id)  # brute force, live nodes
    net.messages                  # Counter of messages sent, by MessageType
    net.churn(0.1)                # 10% of online nodes leave, as many come back
    net.set_online(node, False); node.responsive = False; net.add_node()

``run_virtual(fn, *args)`` runs any coroutine function on a fresh virtual-time loop
(``clock.VirtualTimeLoop``) without a network.

Faults: ``latency`` (uniform one-way delay), ``loss`` (a request or a reply vanishes,
and the caller times out), ``unresponsive`` (nodes that accept and never answer),
offline nodes (connection refused after one trip), churn, and any node's ``handler``
can be replaced by a hostile one. Tables start full, as in a long-running network;
answering peers join a node's table as identify would admit them, and the router marks
the peers of its lookups useful or failed as a real node's does (a failed one is
replaced by the next newcomer to its bucket). ``wall_clock()`` is the epoch time the
stores see: 2026-01-01 plus ``now()``.
"""

from .clock import SimulationStalled, VirtualTimeLoop, run_virtual
from .network import SimConfig, SimMessenger, SimNetwork, SimNode
from .validator import SequenceValidator

__all__ = [
    "SequenceValidator",
    "SimConfig",
    "SimMessenger",
    "SimNetwork",
    "SimNode",
    "SimulationStalled",
    "VirtualTimeLoop",
    "run_virtual",
]
