"""The README's "A DHT of your own on one machine" commands, run as written.

Only what cannot be fixed in a README changes: the data directory (a tmp dir instead
of /tmp/dht-a), the two ports (free ones instead of 4001 and 9464) and node A's
address, which the test reads from the node's "listening on" log line. The client
commands get their own data directory through DHTSTORE_DATA_DIR, so no one's
~/.dhtstore is read.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "### A DHT of your own on one machine"


def sh_blocks() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    return re.findall(r"```sh\n(.*?)```", text[start : end if end >= 0 else None], re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_private_dht_commands_work_as_written(tmp_path: Path) -> None:
    server_block, client_block = sh_blocks()
    port, metrics_port = free_port(), free_port()

    def adapt(script: str) -> str:
        return script.replace("/tmp/dht-a", str(tmp_path / "dht-a")).replace("4001", str(port)).replace("9464", str(metrics_port))

    env = {**os.environ, "DHTSTORE_DATA_DIR": str(tmp_path / "client")}
    env.pop("DHTSTORE_STORE", None)
    *setup, run_line = adapt(server_block).strip().splitlines()
    assert run_line.startswith("dhtstore run ")
    subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(setup)], cwd=tmp_path, env=env, check=True, timeout=60)

    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        node = subprocess.Popen(["bash", "-c", f"exec {run_line}"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"listening on (\S+)", log_path.read_text())):
            assert node.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        address = found.group(1)
        peer_id = address.rsplit("/", 1)[1]

        client = re.sub(r"^A=\S+", f"A={address}", adapt(client_block), count=1, flags=re.M)
        assert f"A={address}" in client
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", client], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert f"{peer_id} /ip4/127.0.0.1/tcp/{port}" in out  # closest and findpeer
        assert "no providers" in out  # before `provide add`
        assert out.count(f"{peer_id} /ip4/127.0.0.1/tcp/{port}") >= 3  # closest, findpeer, findprovs after it
        assert "stored on 1 peers" in out
        record = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
        assert record["key"] == f"/pk/{peer_id}"
        assert bytes.fromhex(record["value_hex"]) == (tmp_path / "a.pub").read_bytes()
        assert re.search(r'dhtstore_requests_total\{.*type="PUT_VALUE".*\} 1\.0', out)
        assert "Traceback" not in result.stderr
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
    log_text = log_path.read_text()
    assert node.returncode == 0, log_text
    assert "Traceback" not in log_text and "stopped; routing-table snapshot written" in log_text
