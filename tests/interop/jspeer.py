"""Drive real js-libp2p Kademlia peers from Python tests.

Each peer is a Node.js process running ``js/peer.mjs`` (libp2p 3.2 with TCP, Noise
and/or TLS, yamux, identify, ping and kad-dht, versions pinned in ``js/package-lock.json``),
controlled with JSON lines on its stdin/stdout. Typical use::

    async with start_js_peer(node_bin, key_type="secp256k1") as js:
        await js.dial(our_addr)                    # js dials us
        info = await js.peer_info(our_peer_id)     # what js's identify learnt
        result = await js.get_closest_peers(key)   # a kad query from js

    async with start_js_peers(node_bin, 5, protocol=LAN_PROTOCOL_ID) as peers:
        ...                                        # several, stopped together on exit

Options of a peer (see ``js/peer.mjs`` for the wire form):
  key_type       "Ed25519", "secp256k1" or "RSA" (js 3.2 makes no peer id of ECDSA)
  client_mode    True for a DHT client (does not serve or advertise the kad protocol)
  protocol       kad protocol id, "/ipfs/kad/1.0.0" or "/ipfs/lan/kad/1.0.0"
  listen         listen multiaddrs (default one TCP port on 127.0.0.1)
  permissive_namespaces  record namespaces (e.g. "test" for ``/test/…`` keys) that
                 accept any value, for put/get tests without real validators
  connection_manager  libp2p connectionManager options, merged over the harness's
                 ``{"inboundConnectionThreshold": 1000}`` (js's default accepts only 5
                 inbound connections per second from one host, and every test peer
                 dials from 127.0.0.1)
  security       connection encrypters in order of preference, of "noise" and "tls"
                 (default ("noise",); ("tls",) is a peer that speaks only TLS)
  transports     of "tcp" and "quic" (default ("tcp",); ("quic",) with a
                 ``/udp/0/quic-v1`` listen address is a peer that speaks only QUIC,
                 @chainsafe/libp2p-quic 2.1, which is native and needs Node >= 22: run
                 such peers with ``NODE22``, the Node 22 that ``npm ci`` installs from
                 the npm registry, as CI's own Node is 20; the ``js_harness_quic``
                 fixture gives it)
  sink_protocol  a protocol id served as a byte sink (reads to EOF, answers the count
                 as a big-endian uint64): scripts/bench_transport.py uses it

Query commands (find_peer, get_closest_peers, provide, find_providers, put, get)
return a summary of the js query's events: ``peers`` (final peers), ``providers``,
``values``, ``responses`` (each peer's answer, parsed by js) and ``errors``
(peers whose query failed), each peer as ``{"peerId", "addrs"}``.

Unsolicited events (``JsPeer.events``, ``wait_event``): ``identify`` (a peer's
protocols, listen addresses, agent), ``connect`` and ``disconnect``. js takes a
contact into its routing table only after pinging it: ``wait_in_routing_table``
before a query that must reach that peer.

``ensure_node_modules`` installs the pinned packages with ``npm ci`` once; the
session fixture ``js_harness`` in ``conftest.py`` calls it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import Process, TaskGroup

from dhtstore.peerid import PeerId

JS_DIR = Path(__file__).parent / "js"
PEER_SCRIPT = JS_DIR / "peer.mjs"
NODE22 = JS_DIR / "node_modules" / ".bin" / "node"  # the npm package node@22 (package.json)
REQUIRED_PACKAGES = ("libp2p", "@chainsafe/libp2p-quic", "node")
COMMAND_TIMEOUT = 60.0  # seconds; a js query has its own 20 s default inside
START_TIMEOUT = 60.0  # RSA key generation plus module loading on a busy machine

log = logging.getLogger(__name__)
P = TypeVar("P", bound="JsonLinePeer")


class JsPeerError(RuntimeError):
    """A js command failed, or the js process died or did not answer in time."""


def ensure_node_modules(npm: str | None = None) -> None:
    """Install the pinned js packages (``npm ci``) unless node_modules is there."""
    if all((JS_DIR / "node_modules" / name).is_dir() for name in REQUIRED_PACKAGES):
        return
    npm = npm or shutil.which("npm")
    if npm is None:
        raise JsPeerError("npm not found: cannot install the js-libp2p harness")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=600)


class JsonLinePeer:
    """A peer process driven with JSON lines: one command, one reply, and events.
    Build one with ``run_peer_process``."""

    label = "peer"  # names the implementation in error messages

    def __init__(self, process: Process, task_group: TaskGroup, ready: dict[str, Any]):
        self._process = process
        self._tg = task_group
        self.peer_id = PeerId.from_string(ready["peerId"])
        self.addrs: list[str] = ready["addrs"]  # each ends in /p2p/<id>
        self.protocols: list[str] = ready["protocols"]
        self.key_type: str = ready["keyType"]
        self.events: list[dict[str, Any]] = []  # unsolicited events, in order
        self.stderr_tail: list[str] = []
        self._next_id = 0
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._event_arrived = anyio.Event()
        self._closed = False

    @property
    def addr(self) -> str:
        """The first listen multiaddr, with /p2p/<id>."""
        return self.addrs[0]

    async def command(self, cmd: str, **args: Any) -> Any:
        """Send one command and return its result; raises JsPeerError on failure."""
        if self._closed:
            raise JsPeerError(f"{self.label} peer has exited" + self._stderr_hint())
        self._next_id += 1
        ident = self._next_id
        done, box = anyio.Event(), []
        self._waiting[ident] = (done, box)
        line = json.dumps({"id": ident, "cmd": cmd, **args}) + "\n"
        assert self._process.stdin is not None
        await self._process.stdin.send(line.encode())
        with anyio.move_on_after(COMMAND_TIMEOUT):
            await done.wait()
        self._waiting.pop(ident, None)
        if not box:
            raise JsPeerError(f"{self.label} command {cmd} got no answer" + self._stderr_hint())
        reply = box[0]
        if not reply.get("ok"):
            raise JsPeerError(f"{self.label} command {cmd} failed: {reply.get('error')}" + self._stderr_hint())
        return reply.get("result")

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        """The first event (past or future) for which ``predicate`` holds."""
        with anyio.fail_after(timeout):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                arrived = self._event_arrived
                await arrived.wait()

    def _stderr_hint(self) -> str:
        return (f"; {self.label} stderr: " + " | ".join(self.stderr_tail[-12:])) if self.stderr_tail else ""

    async def _read_stdout(self, lines: AsyncIterator[str]) -> None:
        async for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("%s peer printed a non-JSON line: %r", self.label, line[:200])
                continue
            if "id" in msg and msg["id"] in self._waiting:
                done, box = self._waiting[msg["id"]]
                box.append(msg)
                done.set()
            elif "event" in msg:
                self.events.append(msg)
                self._event_arrived.set()
                self._event_arrived = anyio.Event()
        self._closed = True
        for done, _ in self._waiting.values():
            done.set()


class JsPeer(JsonLinePeer):
    """One running js-libp2p peer. Build it with ``start_js_peer``."""

    label = "js"

    # Convenience wrappers, one per command of peer.mjs.
    async def info(self) -> dict[str, Any]:
        return await self.command("info")

    async def dial(self, addr: str) -> dict[str, Any]:
        return await self.command("dial", addr=addr)

    async def ping(self, *, addr: str | None = None, peer_id: PeerId | None = None) -> float:
        args = {"addr": addr} if addr is not None else {"peerId": str(peer_id)}
        return (await self.command("ping", **args))["rttMs"]

    async def peer_info(self, peer_id: PeerId) -> dict[str, Any]:
        return await self.command("peerInfo", peerId=str(peer_id))

    async def connections(self) -> list[dict[str, Any]]:
        return await self.command("connections")

    async def hang_up(self, peer_id: PeerId) -> None:
        await self.command("hangUp", peerId=str(peer_id))

    async def routing_table(self) -> list[PeerId]:
        return [PeerId.from_string(p) for p in await self.command("routingTable")]

    async def wait_in_routing_table(self, peer_id: PeerId, timeout: float = 20.0) -> None:
        """Wait until js has taken ``peer_id`` into its routing table (js pings a new
        contact first, so this lags the connection); TimeoutError if it never does."""
        with anyio.fail_after(timeout):
            while peer_id not in await self.routing_table():
                await anyio.sleep(0.05)

    async def set_mode(self, mode: str) -> str:
        return await self.command("setMode", mode=mode)

    async def find_peer(self, peer_id: PeerId) -> dict[str, Any]:
        return await self.command("findPeer", peerId=str(peer_id))

    async def get_closest_peers(self, key: bytes) -> dict[str, Any]:
        return await self.command("getClosestPeers", key=key.hex())

    async def provide(self, cid: str) -> dict[str, Any]:
        return await self.command("provide", cid=cid)

    async def find_providers(self, cid: str) -> dict[str, Any]:
        return await self.command("findProviders", cid=cid)

    async def put(self, key: bytes, value: bytes) -> dict[str, Any]:
        return await self.command("put", key=key.hex(), value=value.hex())

    async def get(self, key: bytes) -> dict[str, Any]:
        return await self.command("get", key=key.hex())


async def _lines(stream: Any) -> AsyncIterator[str]:
    """Text lines of a byte stream (no limit on line length other than memory)."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            yield raw.decode(errors="replace")


async def _drain_stderr(peer_stderr: Any, tail: list[str]) -> None:
    async for line in _lines(peer_stderr):
        tail.append(line)
        del tail[:-50]


@asynccontextmanager
async def start_js_peer(
    node_bin: str,
    *,
    key_type: str = "Ed25519",
    client_mode: bool = False,
    protocol: str = "/ipfs/kad/1.0.0",
    listen: list[str] | None = None,
    permissive_namespaces: tuple[str, ...] = (),
    sink_protocol: str | None = None,
    connection_manager: dict[str, Any] | None = None,
    security: tuple[str, ...] = ("noise",),
    transports: tuple[str, ...] = ("tcp",),
) -> AsyncIterator[JsPeer]:
    """Start one js peer; it is stopped (stdin closed, then killed) on exit."""
    options = {
        "keyType": key_type,
        "clientMode": client_mode,
        "protocol": protocol,
        "listen": listen or ["/ip4/127.0.0.1/tcp/0"],
        "permissiveNamespaces": list(permissive_namespaces),
        "sinkProtocol": sink_protocol,
        "connectionManager": connection_manager or {},
        "security": list(security),
        "transports": list(transports),
    }
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    async with run_peer_process([node_bin, str(PEER_SCRIPT), json.dumps(options)], JS_DIR, env, JsPeer) as peer:
        yield peer


@asynccontextmanager
async def run_peer_process(argv: list[str], cwd: Path, env: dict[str, str], peer_class: type[P]) -> AsyncIterator[P]:
    """Start a peer process that prints a ``ready`` event, then answers JSON-line
    commands; it is stopped (stdin closed, then killed) on exit."""
    label = peer_class.label
    process = await anyio.open_process(argv, cwd=cwd, env=env)
    try:
        async with anyio.create_task_group() as tg:
            stderr_tail: list[str] = []
            assert process.stdout is not None and process.stderr is not None
            tg.start_soon(_drain_stderr, process.stderr, stderr_tail)
            stdout_lines = _lines(process.stdout)
            with anyio.move_on_after(START_TIMEOUT):
                async for line in stdout_lines:
                    ready = json.loads(line)
                    if ready.get("event") == "ready":
                        break
                else:
                    ready = None
            if not ready or ready.get("event") != "ready":
                raise JsPeerError(f"{label} peer did not start; stderr: " + " | ".join(stderr_tail[-10:]))
            peer = peer_class(process, tg, ready)
            peer.stderr_tail = stderr_tail
            tg.start_soon(peer._read_stdout, stdout_lines)
            try:
                yield peer
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(process)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(process)


async def _stop(process: Process) -> None:
    if process.returncode is not None:
        return
    try:
        assert process.stdin is not None
        await process.stdin.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    with anyio.move_on_after(5):
        await process.wait()
        return
    process.kill()
    await process.wait()


@asynccontextmanager
async def start_js_peers(node_bin: str, count: int, **options: Any) -> AsyncIterator[list[JsPeer]]:
    """Start ``count`` js peers, each with the same ``options``."""
    async with AsyncExitStack() as stack:
        # One after another: an async context belongs to the task that entered it.
        # A non-RSA peer starts in well under a second.
        peers = [await stack.enter_async_context(start_js_peer(node_bin, **options)) for _ in range(count)]
        yield peers
