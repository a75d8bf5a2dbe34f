import pytest
from sqlalchemy import select

from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.models import PeerRow
from dhtstore.data.schema import open_store
from dhtstore.network.identify import IdentifyInfo
from dhtstore.peerbook import FORGET_AFTER, PeerBook
from dhtstore.providerstore.sql import SqlProviderStore

pytestmark = pytest.mark.anyio

ADDR = bytes([0x04, 127, 0, 0, 1, 0x06, 0x0F, 0xA1])
MH = b"\x12\x20" + bytes(32)


async def test_identify_info_is_written_updated_and_pruned(store_url: str) -> None:
    now = [1_800_000_000.0]
    engine = await open_store(store_url)
    try:
        book = PeerBook(engine, clock=lambda: now[0])
        kept, gone, provider = (PrivateKey.generate().peer_id() for _ in range(3))
        for peer in (kept, gone, provider):
            book.on_identify(peer, IdentifyInfo(listen_addrs=(ADDR,), protocols=("/ipfs/kad/1.0.0",), agent_version="kubo/0.22"))
        assert await book.flush() == 3
        now[0] += 60
        book.on_identify(kept, IdentifyInfo(listen_addrs=(), protocols=("/ipfs/ping/1.0.0",), agent_version="kubo/0.23"))
        assert await book.flush() == 1
        async with SqlProviderStore(engine, clock=lambda: now[0]) as providers:
            await providers.add_provider(MH, provider, (ADDR,))
        async with engine.connect() as conn:
            row = (await conn.execute(select(PeerRow).where(PeerRow.peer_id == kept.to_bytes()))).one()
        assert (row.agent, row.protocols, row.peer_id_text) == ("kubo/0.23", "/ipfs/ping/1.0.0", str(kept))
        assert row.addrs and row.first_seen_at == 1_800_000_000 and row.last_seen_at == 1_800_000_060

        now[0] += FORGET_AFTER - 30  # `gone` and `provider` unseen for longer than FORGET_AFTER
        book.on_identify(kept, IdentifyInfo(agent_version="kubo/0.23"))
        await book.flush()
        assert await book.prune() == 1
        async with engine.connect() as conn:
            left = {r[0] for r in await conn.execute(select(PeerRow.peer_id_text))}
        assert left == {str(kept), str(provider)}  # a provider's row stays while its record does
    finally:
        await engine.dispose()
