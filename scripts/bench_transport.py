#!/usr/bin/env python3
"""Transport benchmark on loopback: our libp2p host against a js-libp2p node, with
the same load generator (our client host) pointed at each.

    python scripts/bench_transport.py                       # ~2 minutes, prints a Markdown table
    python scripts/bench_transport.py --duration 1 --rounds 1   # a quick look
    python scripts/bench_transport.py --security tls        # TLS 1.3 instead of Noise, on all three

Figures, for each server (ours in a subprocess, js-libp2p 3.2 with kad-dht 16.2 in
Node.js via tests/interop/js):
- handshakes/s: TCP connect + multistream + Noise XX (or TLS 1.3, ``--security tls``)
  + yamux, one after another, each connection closed again;
- FIND_NODE round trips/s on one connection (one stream, one request at a time, as
  go's message sender does);
- FIND_NODE round trips/s across 50 connections (50 client hosts, one loop each);
- MB/s through one yamux stream (client → byte sink, count echoed at the end).

Both servers answer FIND_NODE with no closer peers (the js node's routing table is
empty: the clients are not DHT servers), so the figure is the transport and framing
cost, not a routing-table lookup. The client and both servers share this machine's
cores, so the client's own cost is part of every figure; the ratio is what compares.
Needs Node.js and ``npm ci`` in tests/interop/js (done on demand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from dhtstore.crypto.keys import PrivateKey  # noqa: E402
from dhtstore.network import multiaddrs  # noqa: E402
from dhtstore.network.connection import Stream  # noqa: E402
from dhtstore.network.host import Host  # noqa: E402
from dhtstore.network.kadmessenger import LibP2PKadMessenger  # noqa: E402
from dhtstore.network.limits import HostLimits, PeerRateLimiter  # noqa: E402
from dhtstore.network.resources import ResourceLimits, ScopeLimits  # noqa: E402
from dhtstore.server.api import RequestHandler  # noqa: E402
from dhtstore.server.kadserver import KadServer  # noqa: E402
from dhtstore.types import Message, MessageType, PeerInfo  # noqa: E402

SINK_PROTOCOL = "/dhtstore/bench/sink/1.0.0"
CONNECTIONS = 50
STREAM_BYTES = 64 * 1024 * 1024
CHUNK = 256 * 1024
MAX_OPS = 1_000_000  # bounds every loop besides its duration


# -- the server side (ours runs in a subprocess, like the js node) -------------------


class EmptyAnswers(RequestHandler):
    """FIND_NODE answered with no closer peers, like the js node with an empty table."""

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        return Message(request.type, key=request.key)


async def sink(stream: Stream) -> None:
    total = 0
    try:
        while True:
            total += len(await stream.receive())
    except anyio.EndOfStream:
        pass
    await stream.send(struct.pack(">Q", total))


async def serve(security: str) -> None:
    unlimited = ScopeLimits()  # every client dials from 127.0.0.1
    limits = HostLimits(high_water=1024, low_water=1024, resources=ResourceLimits(system=unlimited, ip=unlimited, peer=unlimited))
    async with Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=limits, security=[security]) as host:
        # no rate limit: the benchmark is the flood
        KadServer(host, EmptyAnswers(), limiter=PeerRateLimiter(rate=1e9, burst=1e9)).start()
        host.set_handler(SINK_PROTOCOL, sink)
        print(json.dumps({"addr": str(multiaddrs.with_peer_id(host.listen_addrs[0], host.peer_id))}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


# -- the load generator ----------------------------------------------------------------


async def timed(duration: float, op: Callable[[], Awaitable[None]]) -> float:
    """Operations per second of ``op`` run back to back for ``duration`` seconds."""
    count = 0
    started = time.perf_counter()
    while count < MAX_OPS and time.perf_counter() - started < duration:
        await op()
        count += 1
    return count / (time.perf_counter() - started)


async def handshakes_per_second(client: Host, target: str, duration: float) -> float:
    peer = multiaddrs.split_peer_id(multiaddrs.parse(target))[1]
    assert peer is not None

    async def handshake() -> None:
        conn = await client.connect(target)
        await conn.close()
        with anyio.fail_after(5):
            while client.connection(peer) is not None:
                await anyio.sleep(0)

    return await timed(duration, handshake)


def find_node() -> Message:
    return Message(MessageType.FIND_NODE, key=os.urandom(32))


async def round_trips_one_connection(client: Host, target: PeerInfo, duration: float) -> float:
    messenger = LibP2PKadMessenger(client)
    await messenger.request(target, find_node())  # connect and open the stream first

    async def request() -> None:
        await messenger.request(target, find_node())

    return await timed(duration, request)


async def round_trips_many_connections(target: PeerInfo, duration: float, security: str) -> float:
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(Host(PrivateKey.generate(), security=[security])) for _ in range(CONNECTIONS)
        ]
        messengers = [LibP2PKadMessenger(c) for c in clients]
        for m in messengers:
            await m.request(target, find_node())
        counts = [0] * CONNECTIONS

        async def loop(i: int) -> None:
            deadline = time.perf_counter() + duration
            while counts[i] < MAX_OPS and time.perf_counter() < deadline:
                await messengers[i].request(target, find_node())
                counts[i] += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(CONNECTIONS):
                tg.start_soon(loop, i)
        return sum(counts) / (time.perf_counter() - started)


async def stream_megabytes_per_second(client: Host, target: PeerInfo) -> float:
    stream = await client.new_stream(target, [SINK_PROTOCOL])
    chunk = os.urandom(CHUNK)
    started = time.perf_counter()
    for _ in range(STREAM_BYTES // CHUNK):
        await stream.send(chunk)
    await stream.send_eof()
    reply = b""
    while len(reply) < 8:
        reply += await stream.receive()
    elapsed = time.perf_counter() - started
    (received,) = struct.unpack(">Q", reply[:8])
    if received != STREAM_BYTES:
        raise RuntimeError(f"sink counted {received} bytes, sent {STREAM_BYTES}")
    return STREAM_BYTES / elapsed / 1e6


def peer_info(target: str) -> PeerInfo:
    transport, peer = multiaddrs.split_peer_id(multiaddrs.parse(target))
    assert peer is not None
    return PeerInfo(peer, (transport.to_bytes(),))


async def figure(name: str, target: str, duration: float, security: str) -> float:
    """One measurement of one figure against one server, from a fresh client."""
    async with Host(PrivateKey.generate(), security=[security]) as client:
        if name == "handshakes/s":
            return await handshakes_per_second(client, target, duration)
        if name == "FIND_NODE/s, 1 connection":
            return await round_trips_one_connection(client, peer_info(target), duration)
        if name == f"FIND_NODE/s, {CONNECTIONS} connections":
            return await round_trips_many_connections(peer_info(target), duration, security)
        return await stream_megabytes_per_second(client, peer_info(target))


FIGURES = ["handshakes/s", "FIND_NODE/s, 1 connection", f"FIND_NODE/s, {CONNECTIONS} connections", "MB/s, 1 stream"]


async def run(duration: float, rounds: int, security: str) -> str:
    from jspeer import ensure_node_modules, start_js_peer

    ensure_node_modules()
    node = os.environ.get("NODE", "node")
    server = await anyio.open_process([sys.executable, __file__, "--serve", "--security", security], stdin=subprocess.PIPE)
    try:
        assert server.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await server.stdout.receive(1)
        targets = {"ours": json.loads(line)["addr"]}
        js_limits = {"inboundConnectionThreshold": 1e9, "maxIncomingPendingConnections": 256, "maxConnections": 1024}
        async with start_js_peer(
            node, sink_protocol=SINK_PROTOCOL, connection_manager=js_limits, security=(security,)
        ) as js:
            targets["js"] = js.addr
            # Both servers run throughout; each figure alternates between them, round
            # after round, so a change in the machine's load hits both alike.
            samples: dict[str, dict[str, list[float]]] = {"ours": {}, "js": {}}
            for name in FIGURES:
                for r in range(rounds):
                    for who in ("ours", "js") if r % 2 == 0 else ("js", "ours"):
                        value = await figure(name, targets[who], duration, security)
                        samples[who].setdefault(name, []).append(value)
    finally:
        if server.stdin is not None:
            await server.stdin.aclose()
        with anyio.move_on_after(5):
            await server.wait()
        if server.returncode is None:
            server.kill()
    ours = {k: statistics.median(v) for k, v in samples["ours"].items()}
    theirs = {k: statistics.median(v) for k, v in samples["js"].items()}
    return report(ours, theirs, duration, rounds, security)


def report(ours: dict[str, float], theirs: dict[str, float], duration: float, rounds: int, security: str) -> str:
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "| figure | dhtstore | js-libp2p 3.2 | ours / js |",
        "|---|---:|---:|---:|",
    ]
    for name, value in ours.items():
        lines.append(f"| {name} | {value:,.1f} | {theirs[name]:,.1f} | {value / theirs[name]:.2f}× |")
    lines.append("")
    lines.append(
        f"Security {security}; loopback, {os.cpu_count()} cores, Python {platform.python_version()}, Node {version}, "
        f"median of {rounds} rounds alternating the two servers, {duration:g} s per measurement, "
        f"{STREAM_BYTES // 2**20} MiB through the stream; load average at the end {os.getloadavg()[0]:.1f}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure and server (default 3)")
    parser.add_argument("--security", choices=["noise", "tls"], default="noise", help="what every connection uses (default noise)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server subprocess
    args = parser.parse_args()
    if args.serve:
        anyio.run(serve, args.security)
        return
    print(anyio.run(run, args.duration, args.rounds, args.security))


if __name__ == "__main__":
    main()
