"""Drive real py-libp2p Kademlia peers (PyPI ``libp2p`` 0.8.1, trio) from Python tests.

Each peer is a process running ``pylibp2p/peer.py`` in its own virtualenv
(``pylibp2p/.venv``, built from the exact pins of ``pylibp2p/requirements.txt`` by
``ensure_venv``): py-libp2p pins protobuf, multiaddr and trio versions of its own, so it
never shares dhtstore's environment. It is driven like a js peer (see jspeer.py)::

    async with start_py_peer(python, key_type="secp256k1", security=("tls",)) as py:
        await py.dial(our_addr)                    # py dials us
        info = await py.identify(our_peer_id)      # what our identify tells py
        peers = await py.get_closest_peers(key)    # a kad query from py

Options: ``key_type`` "ed25519", "secp256k1" or "rsa"; ``security`` the only security
protocols the peer offers and accepts, of "noise" and "tls"; ``transport`` "tcp" or
"quic"; ``client_mode`` for a DHT client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from jspeer import JsonLinePeer, JsPeerError, run_peer_process

from dhtstore.peerid import PeerId

PY_DIR = Path(__file__).parent / "pylibp2p"
PEER_SCRIPT = PY_DIR / "peer.py"
REQUIREMENTS = PY_DIR / "requirements.txt"
VENV = PY_DIR / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / "requirements.installed"  # a copy of the requirements the venv was built from


def ensure_venv() -> str:
    """Build the py-libp2p virtualenv unless it holds exactly the pinned requirements;
    return its python."""
    wanted = REQUIREMENTS.read_text()
    if VENV_PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return str(VENV_PYTHON)
    _run(sys.executable, "-m", "venv", "--clear", str(VENV), timeout=300)
    # Every transitive dependency is pinned too: --no-deps installs exactly the list, and
    # pip check proves the list complete.
    _run(str(VENV_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "-r", str(REQUIREMENTS), timeout=900)
    _run(str(VENV_PYTHON), "-m", "pip", "check", timeout=120)
    STAMP.write_text(wanted)
    return str(VENV_PYTHON)


def _run(*argv: str, timeout: float) -> None:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        tail = (done.stdout + done.stderr).strip().splitlines()[-10:]
        raise subprocess.SubprocessError(f"{' '.join(argv[:4])} ... failed ({done.returncode}): " + " | ".join(tail))


class PyPeer(JsonLinePeer):
    """One running py-libp2p peer. Build it with ``start_py_peer``."""

    label = "py-libp2p"

    async def info(self) -> dict[str, Any]:
        return await self.command("info")

    async def dial(self, addr: str) -> dict[str, Any]:
        return await self.command("dial", addr=addr)

    async def add_to_routing_table(self, peer_id: PeerId) -> None:
        await self.command("addToRoutingTable", peerId=str(peer_id))

    async def routing_table(self) -> list[PeerId]:
        return [PeerId.from_string(p) for p in await self.command("routingTable")]

    async def identify(self, peer_id: PeerId) -> dict[str, Any]:
        """Run identify against ``peer_id`` now: agentVersion, protocols, listenAddrs, ..."""
        return await self.command("identify", peerId=str(peer_id))

    async def connections(self) -> list[dict[str, Any]]:
        """Each connection as ``{"peerId", "security"}`` ("noise", "tls" or "quic")."""
        return await self.command("connections")

    async def ping(self, peer_id: PeerId) -> int:
        """One ping's round trip in microseconds."""
        return (await self.command("ping", peerId=str(peer_id)))["rttUs"]

    async def find_peer(self, peer_id: PeerId) -> dict[str, Any] | None:
        return await self.command("findPeer", peerId=str(peer_id))

    async def get_closest_peers(self, key: bytes) -> list[PeerId]:
        return [PeerId.from_string(p) for p in await self.command("getClosestPeers", key=key.hex())]

    async def provide(self, cid: str) -> bool:
        return await self.command("provide", cid=cid)

    async def find_providers(self, cid: str) -> list[dict[str, Any]]:
        return await self.command("findProviders", cid=cid)

    async def hang_up(self, peer_id: PeerId) -> None:
        await self.command("hangUp", peerId=str(peer_id))


@asynccontextmanager
async def start_py_peer(
    python: str,
    *,
    key_type: str = "ed25519",
    security: tuple[str, ...] = ("noise",),
    transport: str = "tcp",
    client_mode: bool = False,
) -> AsyncIterator[PyPeer]:
    """Start one py-libp2p peer; it is stopped (stdin closed, then killed) on exit."""
    options = {"keyType": key_type, "security": list(security), "transport": transport, "clientMode": client_mode}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    async with run_peer_process([python, str(PEER_SCRIPT), json.dumps(options)], PY_DIR, env, PyPeer) as peer:
        yield peer


__all__ = ["JsPeerError", "PyPeer", "ensure_venv", "start_py_peer"]

if __name__ == "__main__":  # .ci/run builds the virtualenv up front
    print(ensure_venv())
