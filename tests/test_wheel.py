"""A built wheel, installed into a fresh virtual environment outside the checkout, runs
the node: the schema revisions ship inside it (``dhtstore/migrations``)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from dhtstore.data.schema import head_revision
from dhtstore.multihash import cid_string

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of a new virtual environment with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(root / "dist"), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = (root / "dist").glob("dhtstore-*.whl")
    venv.create(root / "venv", with_pip=True)
    bin_dir = root / "venv" / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return bin_dir


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DHTSTORE_", "PYTHON", "VIRTUAL_ENV"))}
    return env


def _dhtstore(bin_dir: Path, cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [str(bin_dir / "dhtstore"), *args], cwd=cwd, env=_environment(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"dhtstore {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def test_the_wheel_runs_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c", "import dhtstore; print(dhtstore.__file__)"],
        cwd=tmp_path, env=_environment(), capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), f"dhtstore imported from {where}, not the wheel"
    assert (Path(where).parent / "migrations" / "versions").is_dir()

    data = tmp_path / "data"
    data.mkdir()
    port = _free_port()
    (data / "config.toml").write_text(f'listen = ["/ip4/127.0.0.1/tcp/{port}"]\nmode = "server"\nbootstrap = []\n')
    dd = ("--data-dir", str(data))
    _dhtstore(installed, tmp_path, "init", *dd)
    head = _dhtstore(installed, tmp_path, "db", "current", *dd)
    assert f"revision {head_revision()} (head)" in head, head  # the wheel carries every migration
    _dhtstore(installed, tmp_path, "db", "downgrade", "0001", *dd)
    assert "0001" in _dhtstore(installed, tmp_path, "db", "current", *dd)
    _dhtstore(installed, tmp_path, "db", "upgrade", *dd)
    assert f"revision {head_revision()} (head)" in _dhtstore(installed, tmp_path, "db", "current", *dd)
    cid = cid_string(b"\x12\x20" + hashlib.sha256(b"from the wheel").digest())
    _dhtstore(installed, tmp_path, "provide", "add", cid, *dd)
    assert cid in _dhtstore(installed, tmp_path, "provide", "ls", *dd)

    node = subprocess.Popen(
        [str(installed / "dhtstore"), "run", *dd], cwd=tmp_path, env=_environment(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert node.poll() is None, node.communicate()[0]
                time.sleep(0.1)
        else:
            raise AssertionError("the installed node did not start listening")
    finally:
        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=60)
    assert node.returncode == 0, out
    assert f"listening on /ip4/127.0.0.1/tcp/{port}/p2p/" in out, out
