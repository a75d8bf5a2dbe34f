"""Fixtures for the js-libp2p interop tests (see jspeer.py)."""

from __future__ import annotations

import os
import subprocess

import pytest
from jspeer import JsPeerError, ensure_node_modules


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

