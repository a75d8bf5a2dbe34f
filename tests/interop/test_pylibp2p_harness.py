"""The py-libp2p harness itself: two py peers over QUIC (py-libp2p's, on aioquic) dial,
identify, ping and query each other, so that a failure of the QUIC cases in
test_interop_pylibp2p.py, once our host speaks QUIC, points at our side."""

from __future__ import annotations

import pytest
from pylibp2p_peer import start_py_peer

pytestmark = [pytest.mark.anyio, pytest.mark.interop]


@pytest.mark.parametrize("transport", ["quic"])  # TCP: every case of test_interop_pylibp2p.py
async def test_two_py_peers_dial_ping_and_find_each_other(pylibp2p_python: str, transport: str) -> None:
    async with (
        start_py_peer(pylibp2p_python, transport=transport, security=("noise", "tls")) as a,
        start_py_peer(pylibp2p_python, transport=transport, key_type="secp256k1", security=("tls",)) as b,
    ):
        assert f"/{transport}" in a.addr.replace("/quic-v1", "/quic")
        assert (await a.dial(b.addr))["peerId"] == str(b.peer_id)
        security = "quic" if transport == "quic" else "tls"  # over TCP a proposes Noise, b takes only TLS
        assert {"peerId": str(b.peer_id), "security": security} in await a.connections()
        assert "/ipfs/kad/1.0.0" in (await a.identify(b.peer_id))["protocols"]
        assert await a.ping(b.peer_id) >= 0
        await a.add_to_routing_table(b.peer_id)
        assert b.peer_id in await a.get_closest_peers(b"any key")
