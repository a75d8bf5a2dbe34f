"""`dhtstore run` as a real process, driven the way the README shows."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import anyio
import pytest

from dhtstore.config import read_identity
from dhtstore.crypto.keys import PrivateKey
from dhtstore.network.host import Host

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dhtstore(*args: str, data_dir: Path, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "DHTSTORE_DATA_DIR": str(data_dir)}
    env.pop("DHTSTORE_STORE", None)
    return subprocess.run([sys.executable, "-m", "dhtstore", *args], env=env, capture_output=True, text=True, timeout=timeout, check=check)


class RunningNode:
    def __init__(self, data_dir: Path, *args: str, quic: bool = False):
        self.data_dir = data_dir
        dhtstore("init", data_dir=data_dir)
        self.peer_id = str(read_identity(data_dir / "identity.key").peer_id())
        self.port = free_port()
        self.addr = f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"
        self.quic_addr = f"/ip4/127.0.0.1/udp/{self.port}/quic-v1/p2p/{self.peer_id}"
        env = {**os.environ, "DHTSTORE_DATA_DIR": str(data_dir)}
        listen = ["--listen", f"/ip4/127.0.0.1/tcp/{self.port}"]
        if quic:  # the same port number, as the default config has it
            listen += ["--listen", f"/ip4/127.0.0.1/udp/{self.port}/quic-v1"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dhtstore", "run", *listen, "--mode", "server", "--status-interval", "1", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(self.proc.stdout.read())
                time.sleep(0.1)
        raise AssertionError("node did not start listening")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out
        return out


def test_run_serves_one_shot_clients_and_stops_cleanly(tmp_path):
    a = RunningNode(tmp_path / "a", "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWLU2znyJMtDiHArqAGbZn8CgUGp92kxDBtefftEEaHSZS")
    b = RunningNode(tmp_path / "b", "--bootstrap", a.addr)
    try:
        deadline = time.monotonic() + 20
        while True:  # bounded: b must reach a's table through identify
            found = dhtstore("findpeer", b.peer_id, "--bootstrap", a.addr, "--json", "--timeout", "20", data_dir=tmp_path / "client", check=False)
            if found.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)[0]["addrs"] == [f"/ip4/127.0.0.1/tcp/{b.port}"]

        closest = dhtstore("closest", "hello", "--bootstrap", a.addr, "--json", data_dir=tmp_path / "client")
        assert {p["id"] for p in json.loads(closest.stdout)} >= {a.peer_id, b.peer_id}

        missing = dhtstore("findprovs", "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "--bootstrap", a.addr, "--timeout", "20", data_dir=tmp_path / "client", check=False)
        assert missing.returncode == 1 and missing.stdout == ""

        bad = dhtstore("findprovs", "not-a-cid", "--bootstrap", a.addr, data_dir=tmp_path / "client", check=False)
        assert bad.returncode != 0 and "not a CID" in bad.stderr and "Traceback" not in bad.stderr

        nobody = str(PrivateKey.generate().peer_id())
        absent = dhtstore("get", f"/pk/{nobody}", "--bootstrap", a.addr, "--timeout", "20", data_dir=tmp_path / "client", check=False)
        assert absent.returncode == 1 and absent.stdout == "" and f"no record found for /pk/{nobody}" in absent.stderr

        # a's public-key record on both servers: two valid records, fewer than a quorum of 3
        (tmp_path / "a.pub").write_bytes(read_identity(a.data_dir / "identity.key").public_key().to_protobuf())
        stored = dhtstore("put", f"/pk/{a.peer_id}", str(tmp_path / "a.pub"), "--bootstrap", a.addr, data_dir=tmp_path / "client")
        assert stored.stdout.strip() == "stored on 2 peers"
        short = dhtstore("get", f"/pk/{a.peer_id}", "--quorum", "3", "--bootstrap", a.addr, data_dir=tmp_path / "client", check=False)
        assert short.returncode == 1 and short.stdout == ""
        assert f"only 2 valid records found for /pk/{a.peer_id}, fewer than --quorum 3" in short.stderr
    finally:
        out_b = b.stop()
        out_a = a.stop()
    assert "status:" in out_a and " table=" in out_a
    assert "Traceback" not in out_a + out_b
    with sqlite3.connect(tmp_path / "b" / "dhtstore.db") as db:
        (peers,) = db.execute("select count(*) from routing_snapshot_peers").fetchone()
    assert peers >= 1, "the shutdown snapshot holds b's table"


def test_init_listens_on_tcp_and_quic_on_one_port_and_run_serves_both(tmp_path):
    dhtstore("init", data_dir=tmp_path / "defaults")
    config = tomllib.loads((tmp_path / "defaults" / "config.toml").read_text())
    assert config["listen"] == ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
    node = RunningNode(tmp_path / "a", "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWLU2znyJMtDiHArqAGbZn8CgUGp92kxDBtefftEEaHSZS", quic=True)

    async def reach_both() -> list[str]:
        securities = []
        for addr in (node.quic_addr, node.addr):
            async with Host(PrivateKey.generate()) as client:
                conn = await client.connect(addr)
                assert await client.ping(conn.remote_peer) >= 0
                securities.append(conn.security)
        return securities

    try:
        securities = anyio.run(reach_both, backend="asyncio")
    finally:
        out = node.stop()
    assert securities[0] == "/quic-v1" and securities[1] in ("/noise", "/tls/1.0.0")
    assert f"listening on /ip4/127.0.0.1/udp/{node.port}/quic-v1" in out
    assert "Traceback" not in out


def test_the_public_bootstrap_list_keeps_private_addresses_out_and_a_private_one_lets_them_in():
    # The Amino list is /dnsaddr names: no IP, so nothing says the network is private.
    from dhtstore.cli.run import _is_private_bootstrap
    from dhtstore.config import AMINO_BOOTSTRAP_PEERS

    assert not _is_private_bootstrap(AMINO_BOOTSTRAP_PEERS)
    peer = PrivateKey.generate().peer_id()
    assert not _is_private_bootstrap([f"/ip4/104.131.131.82/tcp/4001/p2p/{peer}"])
    assert _is_private_bootstrap([*AMINO_BOOTSTRAP_PEERS, f"/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{peer}"])
    assert _is_private_bootstrap([f"/ip4/192.168.1.7/tcp/4001/p2p/{peer}"])
