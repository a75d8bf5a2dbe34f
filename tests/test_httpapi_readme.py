"""The README's "Delegated routing over HTTP" commands, run as written.

Only what cannot be fixed in a README changes: the data directory (a tmp dir instead of
/tmp/dht-h), the two ports (free ones instead of 4011 and 8080) and the node's peer id,
which the test reads from the node's "listening on" log line.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from readme_commands import client_env, free_port, running_node, sh_blocks

pytestmark = pytest.mark.slow

SECTION = "## Delegated routing over HTTP"


def test_readme_http_routing_commands_work_as_written(tmp_path: Path) -> None:
    server_block, client_block = sh_blocks(SECTION)
    port, http_port = free_port(), free_port()

    def adapt(script: str) -> str:
        return script.replace("/tmp/dht-h", str(tmp_path / "dht-h")).replace("4011", str(port)).replace("8080", str(http_port))

    env = client_env(tmp_path)

    def ready(log: str) -> bool:
        return "listening on " in log and "delegated routing HTTP API on" in log

    with running_node(adapt(server_block), tmp_path, env, ready) as log_path:
        found = re.search(r"listening on \S+/p2p/(\S+)", log_path.read_text())
        assert found
        peer_id = found.group(1)
        client = re.sub(r"^ID=\S+", f"ID={peer_id}", adapt(client_block), count=1, flags=re.MULTILINE)
        assert f"ID={peer_id}" in client
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", client], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        providers = json.loads(lines[0])["Providers"]
        assert providers == [{"Schema": "peer", "ID": peer_id, "Addrs": [f"/ip4/127.0.0.1/tcp/{port}"], "Protocols": []}]
        assert json.loads(lines[1])["ID"] == peer_id
        assert lines[2:4] == ['{"Providers":[]}', "404"]
        assert lines[4].startswith("unable to parse CID") and lines[5] == "400"
        assert lines[6:] == ["200", "the same record"]
