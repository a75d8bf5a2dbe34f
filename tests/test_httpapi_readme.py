"""The README's "Delegated routing over HTTP" commands, run as written.

Only what cannot be fixed in a README changes: the data directory (a tmp dir instead of
/tmp/dht-h), the two ports (free ones instead of 4011 and 8080) and the node's peer id,
which the test reads from the node's "listening on" log line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_readme_node import README, free_port

pytestmark = pytest.mark.slow

SECTION = "## Delegated routing over HTTP"


def sh_blocks() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```sh\n(.*?)```", text[start : end if end >= 0 else None], re.DOTALL)


def test_readme_http_routing_commands_work_as_written(tmp_path: Path) -> None:
    server_block, client_block = sh_blocks()
    port, http_port = free_port(), free_port()

    def adapt(script: str) -> str:
        return script.replace("/tmp/dht-h", str(tmp_path / "dht-h")).replace("4011", str(port)).replace("8080", str(http_port))

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
        while not (found := re.search(r"listening on \S+/p2p/(\S+)", text := log_path.read_text())) or "delegated routing HTTP API on" not in text:
            assert node.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
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
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
    log_text = log_path.read_text()
    assert node.returncode == 0, log_text
    assert "Traceback" not in log_text
