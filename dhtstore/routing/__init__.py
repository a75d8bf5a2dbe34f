"""The iterative Kademlia lookup. ``api`` is the contract; ``query`` the lookup state
machine and its driver; ``router.KademliaRouter`` the DHT operations built on them."""
