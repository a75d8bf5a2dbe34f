"""An in-process Kademlia network on virtual time, for tests and benchmarks.

Every node runs the real code (``routingtable.kbuckets.KBucketTable``,
``routing.router.KademliaRouter``, ``server.handler.KademliaHandler``); only the
transport is simulated: messages are the ``network.api`` dataclasses handed from one
node's messenger to another node's handler after a random latency. Time is virtual
(``clock.VirtualTimeLoop``), so timeouts cost nothing and a run is reproducible: the
same config and seed give the same messages in the same order.

    from dhtstore.sim import SimConfig, SimNetwork, run_virtual

    net = SimNetwork(SimConfig(nodes=1000, seed=7, latency=(0.01, 0.1), loss=0.01,
                               unresponsive=0.1))
    node = net.node(0)            # .router (dht.DHT, ValueDHT, FindProvidersDHT, …),
                                  # .messenger (KadMessenger), .table, .handler,
                                  # .providers, .values, .lookups (LookupStats list)

    async def main():
        peers = await node.router.find_closest_peers(b"some key", 20)
        await anyio.sleep(3600)   # an hour of virtual time, instantly
        return peers

    peers = run_virtual(main)     # or: anyio.run(main, backend_options=
                                  #   {"loop_factory": VirtualTimeLoop})
    net.true_closest(Key.hash(b"some key"))  # brute-force answer, live nodes only
    net.messages                  # Counter of messages sent, by MessageType
    net.churn(0.1)                # 10% of online nodes leave, as many come back
    net.set_online(node, False); node.responsive = False; net.add_node()

Faults: ``latency`` (uniform one-way delay), ``loss`` (a request or a reply vanishes,
and the caller times out), ``unresponsive`` (nodes that accept and never answer),
offline nodes (connection refused after one trip), churn, and any node's ``handler``
can be replaced by a hostile one. Tables start full, as in a long-running network;
answering peers join a node's table as identify would admit them, silent ones are
marked failed so newcomers can replace them. ``SimNetwork.now()`` is virtual seconds;
``wall_clock()`` the epoch time the stores see (from 2026-01-01).
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
