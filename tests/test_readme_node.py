"""The README's "A DHT of your own on one machine" commands, run as written.

Only what cannot be fixed in a README changes: the data directory (a tmp dir instead
of /tmp/dht-a), the two ports (free ones instead of 4001 and 9464) and node A's
address, which the test reads from the node's "listening on" log line. The client
commands get their own data directory through DHTSTORE_DATA_DIR, so no one's
~/.dhtstore is read.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from readme_commands import client_env, free_port, running_node, sh_blocks

pytestmark = pytest.mark.slow

SECTION = "### A DHT of your own on one machine"


def test_readme_private_dht_commands_work_as_written(tmp_path: Path) -> None:
    server_block, client_block = sh_blocks(SECTION)
    port, metrics_port = free_port(), free_port()

    def adapt(script: str) -> str:
        return script.replace("/tmp/dht-a", str(tmp_path / "dht-a")).replace("4001", str(port)).replace("9464", str(metrics_port))

    env = client_env(tmp_path)
    with running_node(adapt(server_block), tmp_path, env, lambda log: "listening on " in log) as log_path:
        found = re.search(r"listening on (\S+)", log_path.read_text())
        assert found
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
