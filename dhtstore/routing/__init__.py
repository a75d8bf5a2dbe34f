"""The iterative Kademlia lookup. ``api`` is the contract; ``lookup`` the query state
machine and its driver; ``router.KademliaRouter`` the operations built on them."""
