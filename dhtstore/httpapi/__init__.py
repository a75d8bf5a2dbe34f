"""The Delegated Routing V1 HTTP API (ipfs/specs ``src/routing/http-routing-v1.md``),
served from a node's stores and its DHT client: ``api`` says what the server needs
from the node, ``server`` is the aiohttp application, ``limits`` the per-client rate
and lookup limits, ``metrics`` its Prometheus collector."""
