"""dhtstore: a libp2p Kademlia DHT node for the IPFS Amino DHT, with its state in SQL."""

__version__ = "0.1.0"
