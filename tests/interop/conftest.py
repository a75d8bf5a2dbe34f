"""Fixtures for the js-libp2p and py-libp2p interop tests (see jspeer.py, pylibp2p_peer.py)."""

from __future__ import annotations

import os
import subprocess

import pytest
from jspeer import NODE22, JsPeerError, ensure_node_modules
from pylibp2p_peer import ensure_venv


@pytest.fixture(scope="session")
def js_harness(node_bin: str) -> str:
    """The node executable, with the pinned js packages installed (``npm ci``)."""
    try:
        ensure_node_modules()
    except (JsPeerError, OSError, subprocess.SubprocessError) as exc:
        reason = f"cannot install the js-libp2p harness: {exc}"
        if os.environ.get("DHTSTORE_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return node_bin


@pytest.fixture(scope="session")
def pylibp2p_python() -> str:
    """The python of the py-libp2p virtualenv (built from its exact pins on first use)."""
    try:
        return ensure_venv()
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"cannot build the py-libp2p virtualenv (tests/interop/pylibp2p/requirements.txt): {exc}"
        if os.environ.get("DHTSTORE_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def js_harness_quic(js_harness: str) -> str:
    """The Node 22 executable that ``npm ci`` installs (the npm package ``node``), for
    js peers with @chainsafe/libp2p-quic, which needs Node >= 22."""
    try:
        version = subprocess.run([str(NODE22), "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"({exc})"
    if not version.startswith("v22."):
        reason = f"{NODE22} is not Node 22: {version.strip()}"
        if os.environ.get("DHTSTORE_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return str(NODE22)
