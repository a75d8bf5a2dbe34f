"""Revision 0003's census views over ``network_peers``, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import re

import anyio
import pytest
from sqlalchemy import insert, text
from test_data_readme_sql import README, _run_psql, _run_sqlite

from dhtstore.data.addrs import addr_kinds, pack_addrs
from dhtstore.data.engine import make_engine
from dhtstore.data.models import NetworkPeerRow


TCP4 = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
QUIC6 = bytes.fromhex("290000000000000000000000000000000191020fa1cd03")  # /ip6/::1/udp/4001/quic-v1


def _row(i: int, agent: str, protocols: str, addrs: tuple[bytes, ...], failures: int = 0) -> dict[str, object]:
    pid = bytes([0, 4, i, i, i, i])
    return {
        "peer_id": pid, "peer_id_text": f"peer{i}", "kad_key": hashlib.sha256(pid).digest(),
        "addrs": pack_addrs(addrs), "addr_kinds": addr_kinds(addrs), "agent": agent, "protocols": protocols,
        "first_seen_at": 1_900_000_000, "last_seen_at": 1_900_000_000, "last_contact_at": None,
        "failures": failures, "crawled_at": None if i == 2 else 1_900_000_000,
    }


def test_addr_kinds_names_shapes_once_and_skips_garbage() -> None:
    assert addr_kinds((TCP4, QUIC6, TCP4, b"\xff\xff")) == "ip4/tcp\nip6/udp/quic-v1"


@pytest.mark.anyio
async def test_census_views_count_servers(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(NetworkPeerRow), [
                _row(0, "kubo/0.30.0", "/ipfs/kad/1.0.0\n/ipfs/id/1.0.0", (TCP4, QUIC6)),
                _row(1, "kubo/0.30.0", "/ipfs/kad/1.0.0", (TCP4,), failures=2),
                _row(2, "rust-libp2p", "", (QUIC6,)),
            ])
        async with engine.connect() as conn:
            agents = {r.agent: (r.servers, r.responding) for r in await conn.execute(text("SELECT * FROM v_network_agents"))}
            protocols = dict((await conn.execute(text("SELECT protocol, servers FROM v_network_protocols"))).all())
            kinds = dict((await conn.execute(text("SELECT addr_kind, servers FROM v_network_transports"))).all())
            coverage = (await conn.execute(text("SELECT * FROM v_network_coverage"))).one()
            peers = (await conn.execute(text("SELECT count(*) FROM v_network_peers"))).scalar_one()
        assert agents == {"kubo/0.30.0": (2, 1), "rust-libp2p": (1, 1)}
        assert protocols == {"/ipfs/kad/1.0.0": 2, "/ipfs/id/1.0.0": 1}
        assert kinds == {"ip4/tcp": 2, "ip6/udp/quic-v1": 2}
        assert (coverage.peers, coverage.never_crawled, coverage.failing) == (3, 1, 1)
        assert coverage.oldest_crawl_utc.startswith("2030") and peers == 3
    finally:
        await engine.dispose()


def _readme_census_queries() -> list[str]:
    section = README.read_text().split("## The full routing table", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_readme_census_queries_run_as_written(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_store_url" if backend == "sqlite" else "pg_store_url")

    async def fill() -> None:
        engine = make_engine(url)
        async with engine.begin() as conn:
            await conn.execute(insert(NetworkPeerRow), [
                _row(0, "kubo/0.32.1/", "/ipfs/kad/1.0.0\n/ipfs/id/1.0.0", (TCP4, QUIC6)),
                _row(1, "kubo/0.32.1/", "/ipfs/kad/1.0.0", (TCP4,), failures=1),
                _row(2, "kubo/0.29.0/", "/ipfs/kad/1.0.0", (QUIC6,)),
            ])
        await engine.dispose()

    anyio.run(fill)
    run = _run_sqlite if backend == "sqlite" else _run_psql
    kubo3x, protocols, transports, coverage = (run(url, q) for q in _readme_census_queries())
    assert kubo3x == [("kubo/0.32.1/", "2", "1")]
    assert protocols == [("/ipfs/kad/1.0.0", "3"), ("/ipfs/id/1.0.0", "1")]
    assert transports == [("ip4/tcp", "2"), ("ip6/udp/quic-v1", "2")]
    assert coverage[0][0] == "3" and coverage[0][2:] == ("1", "1")
