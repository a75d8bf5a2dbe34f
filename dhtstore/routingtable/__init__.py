"""Who we know, by XOR distance. ``api.RoutingTable`` is the contract; ``kbuckets.KBucketTable`` the implementation."""
