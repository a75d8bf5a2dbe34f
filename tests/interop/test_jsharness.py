"""The js harness itself: two js peers find each other, so a failure in the
mixed-network tests points at our side, not at the harness."""

from __future__ import annotations

import pytest
from jspeer import start_js_peer, start_js_peers

pytestmark = [pytest.mark.anyio, pytest.mark.interop]


async def test_two_js_peers_dial_ping_and_find_each_other(js_harness: str) -> None:
    async with start_js_peers(js_harness, 2) as (a, b):
        dialled = await a.dial(b.addr)
        assert dialled["peerId"] == str(b.peer_id)
        assert await a.ping(peer_id=b.peer_id) >= 0
        await a.wait_event(lambda e: e["event"] == "identify" and e["peerId"] == str(b.peer_id))
        info = await a.peer_info(b.peer_id)
        assert "/ipfs/kad/1.0.0" in info["protocols"]
        found = await a.get_closest_peers(b.peer_id.to_bytes())
        assert not found["errors"]


async def test_client_mode_peer_does_not_advertise_kad(js_harness: str) -> None:
    async with start_js_peer(js_harness, client_mode=True, protocol="/ipfs/lan/kad/1.0.0") as js:
        info = await js.info()
        assert info["mode"] == "client"
        assert "/ipfs/lan/kad/1.0.0" not in info["protocols"]
