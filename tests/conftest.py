"""Shared test fixtures.

Tests that need PostgreSQL or Node.js skip with the reason on a machine without them;
with DHTSTORE_REQUIRE_ALL=1 (set by .ci/run) such a skip is a failure instead, so CI
always runs them.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

REQUIRE_ALL = os.environ.get("DHTSTORE_REQUIRE_ALL") == "1"
PG_URL = os.environ.get("DHTSTORE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def skip_or_fail(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"required by DHTSTORE_REQUIRE_ALL=1 but unavailable: {reason}")
    pytest.skip(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a reachable PostgreSQL, or skip (fail under DHTSTORE_REQUIRE_ALL=1)."""
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    if not _port_open(url.host or "127.0.0.1", url.port or 5432):
        skip_or_fail(f"PostgreSQL not reachable at {url.host}:{url.port} (set DHTSTORE_TEST_PG_URL)")
    return PG_URL


@pytest.fixture(scope="session")
def node_bin() -> str:
    """Path of the node executable, or skip (fail under DHTSTORE_REQUIRE_ALL=1)."""
    path = shutil.which("node")
    if path is None:
        skip_or_fail("Node.js not installed (needed for the js-libp2p interop tests)")
    return path
