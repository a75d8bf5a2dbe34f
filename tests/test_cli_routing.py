"""``dhtstore routing status`` and ``routing_table`` in config.toml."""

from __future__ import annotations

import json
import random
from pathlib import Path

import anyio
import pytest
from test_cli_db import invoke, one_line_error

from dhtstore.config import Config, ConfigError, load, render
from dhtstore.data.engine import make_engine
from dhtstore.kadkey import Key
from dhtstore.peerid import PeerId
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.types import PeerInfo


def test_routing_table_config_key_round_trips_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(render(Config(routing_table="full")))
    assert load(path).routing_table == "full"
    with pytest.raises(ConfigError, match="routing_table = 'huge': use one of kbuckets, full"):
        Config(routing_table="huge")


def test_status_reports_coverage_and_agents(tmp_path: Path) -> None:
    data = tmp_path / "node"
    invoke("init", "--data-dir", str(data))
    code, out = invoke("routing", "status", "--data-dir", str(data))
    assert code == 0 and "peers: 0 " in out, out

    async def fill() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{data / 'dhtstore.db'}")
        rng = random.Random(3)
        table = FullTable(Key(0), engine)
        peers = [PeerId(bytes([0, 0x24, 8, 1, 0x12, 0x20]) + rng.randbytes(32)) for _ in range(4)]
        for p in peers:
            table.add(PeerInfo(p, (bytes.fromhex("047f000001060fa1"),)), 0.0)
        table.mark_crawled(peers[0])
        table.mark_failed(peers[1])
        await table.flush()
        table.note_identify(peers[0], "kubo/0.30.0", ("/ipfs/kad/1.0.0",))
        await table.flush()
        await engine.dispose()

    anyio.run(fill)
    code, out = invoke("routing", "status", "--data-dir", str(data), "--json")
    assert code == 0, out
    figures = json.loads(out)
    assert (figures["peers"], figures["crawled_last_hour"], figures["never_crawled"], figures["failing"]) == (4, 1, 3, 1)
    assert figures["agents"] == {"(unknown)": 3, "kubo/0.30.0": 1}
    code, out = invoke("routing", "status", "--data-dir", str(data))
    assert "peers: 4  crawled in the last hour: 1" in out and "kubo/0.30.0" in out


def test_status_without_a_store_is_one_line(tmp_path: Path) -> None:
    code, out = invoke("routing", "status", "--data-dir", str(tmp_path / "none"))
    assert code != 0 and "dhtstore init" in one_line_error(out)


def test_run_offers_the_full_routing_table() -> None:
    code, out = invoke("run", "--help")
    assert code == 0 and "--routing-table [kbuckets|full]" in out
