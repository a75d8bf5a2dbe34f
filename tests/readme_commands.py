"""Running a README section's shell blocks as written: the first block sets a node up
and ends with its ``dhtstore run`` line, which runs in the background while the
section's client block runs; the test adapts only paths, ports and addresses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def sh_blocks(section: str) -> list[str]:
    """The ```sh blocks of the README section headed ``section``, up to the next ``## ``."""
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```sh\n(.*?)```", text[start : end if end >= 0 else None], re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def client_env(tmp_path: Path) -> dict[str, str]:
    """The commands' environment: their own data directory, so no one's ~/.dhtstore is read."""
    env = {**os.environ, "DHTSTORE_DATA_DIR": str(tmp_path / "client")}
    env.pop("DHTSTORE_STORE", None)
    return env


@contextmanager
def running_node(server_block: str, tmp_path: Path, env: dict[str, str], ready: Callable[[str], bool]) -> Iterator[Path]:
    """Runs the block's set-up lines, then its last line (``dhtstore run …``) in the
    background until ``ready(log)``; yields the log's path, and on the way out stops the
    node with SIGTERM and checks it stopped cleanly."""
    *setup, run_line = server_block.strip().splitlines()
    assert run_line.startswith("dhtstore run ")
    subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(setup)], cwd=tmp_path, env=env, check=True, timeout=60)
    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        node = subprocess.Popen(["bash", "-c", f"exec {run_line}"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not ready(log_path.read_text()):
            assert node.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield log_path
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
    log_text = log_path.read_text()
    assert node.returncode == 0, log_text
    assert "Traceback" not in log_text and "stopped; routing-table snapshot written" in log_text
