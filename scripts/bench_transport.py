#!/usr/bin/env python3
"""Transport benchmark on loopback: our libp2p host against a js-libp2p node, with
the same load generator (our client host) pointed at each.

    python scripts/bench_transport.py                       # ~2 minutes, prints a Markdown table
    python scripts/bench_transport.py --duration 1 --rounds 1   # a quick look
    python scripts/bench_transport.py --security tls        # TLS 1.3 instead of Noise, on all three
    python scripts/bench_transport.py --transport quic      # QUIC v1 (js: @chainsafe/libp2p-quic on Node 22)

Figures, for each server (ours in a subprocess, js-libp2p 3.2 with kad-dht 16.2 in
Node.js via tests/interop/js):
- handshakes/s: TCP connect + multistream + Noise XX (or TLS 1.3, ``--security tls``)
  + yamux, one after another, each connection closed again; with ``--transport quic``
  the QUIC v1 handshake (TLS 1.3 inside QUIC) instead;
- FIND_NODE round trips/s on one connection (one stream, one request at a time, as
  go's message sender does);
- FIND_NODE round trips/s across 50 connections (50 client hosts, one loop each);
- MB/s through one yamux stream, or one QUIC stream (client → byte sink, count echoed
  at the end).

Beside each figure, the server process's CPU time per operation (per handshake, per
FIND_NODE, per MiB; user + system from /proc, all its threads, on Linux), measured over
the same seconds: a load from other processes slows both servers' figures, but it
changes what each spends per operation far less.

Both servers answer FIND_NODE with no closer peers (the js node's routing table is
empty: the clients are not DHT servers), so the figure is the transport and framing
cost, not a routing-table lookup. The client and both servers share this machine's
cores, so the client's own cost is part of every figure; the ratio is what compares.
Needs Node.js and ``npm ci`` in tests/interop/js (done on demand); the QUIC js node
runs on the Node 22 that ``npm ci`` installs there (its QUIC module needs Node >= 22).
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
STREAM_MIB = {"tcp": 64, "quic": 16}  # per transport: QUIC on aioquic moves far fewer MB/s
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


def listen_addr(transport: str) -> str:
    return "/ip4/127.0.0.1/udp/0/quic-v1" if transport == "quic" else "/ip4/127.0.0.1/tcp/0"


async def serve(security: str, transport: str) -> None:
    unlimited = ScopeLimits()  # every client dials from 127.0.0.1
    limits = HostLimits(high_water=1024, low_water=1024, resources=ResourceLimits(system=unlimited, ip=unlimited, peer=unlimited))
    async with Host(PrivateKey.generate(), [listen_addr(transport)], limits=limits, security=[security]) as host:
        # no rate limit: the benchmark is the flood
        KadServer(host, EmptyAnswers(), limiter=PeerRateLimiter(rate=1e9, burst=1e9)).start()
        host.set_handler(SINK_PROTOCOL, sink)
        print(json.dumps({"addr": str(multiaddrs.with_peer_id(host.listen_addrs[0], host.peer_id))}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


# -- the load generator ----------------------------------------------------------------


class CpuMeter:
    """CPU seconds the server process spends per operation over a measurement."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self._start: float | None = None
        self.per_op: float | None = None

    def cpu(self) -> float | None:
        if self.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # not Linux
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def begin(self) -> None:
        self._start = self.cpu()

    def end(self, ops: float) -> None:
        now = self.cpu()
        if self._start is not None and now is not None and ops > 0:
            self.per_op = (now - self._start) / ops


meter = CpuMeter(None)  # replaced by ``run`` before each measurement, for the server measured


async def timed(duration: float, op: Callable[[], Awaitable[None]]) -> float:
    """Operations per second of ``op`` run back to back for ``duration`` seconds."""
    count = 0
    meter.begin()
    started = time.perf_counter()
    while count < MAX_OPS and time.perf_counter() - started < duration:
        await op()
        count += 1
    elapsed = time.perf_counter() - started
    meter.end(count)
    return count / elapsed


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

        meter.begin()
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(CONNECTIONS):
                tg.start_soon(loop, i)
        elapsed = time.perf_counter() - started
        meter.end(sum(counts))
        return sum(counts) / elapsed


async def stream_megabytes_per_second(client: Host, target: PeerInfo, mib: int) -> float:
    total = mib * 1024 * 1024
    stream = await client.new_stream(target, [SINK_PROTOCOL])
    chunk = os.urandom(CHUNK)
    meter.begin()
    started = time.perf_counter()
    for _ in range(total // CHUNK):
        await stream.send(chunk)
    await stream.send_eof()
    reply = b""
    while len(reply) < 8:
        reply += await stream.receive()
    elapsed = time.perf_counter() - started
    meter.end(mib)
    (received,) = struct.unpack(">Q", reply[:8])
    if received != total:
        raise RuntimeError(f"sink counted {received} bytes, sent {total}")
    return total / elapsed / 1e6


def peer_info(target: str) -> PeerInfo:
    transport, peer = multiaddrs.split_peer_id(multiaddrs.parse(target))
    assert peer is not None
    return PeerInfo(peer, (transport.to_bytes(),))


async def figure(name: str, target: str, duration: float, security: str, transport: str) -> float:
    """One measurement of one figure against one server, from a fresh client."""
    async with Host(PrivateKey.generate(), security=[security]) as client:
        connection_kind = (await client.connect(target)).security
        expected = "/quic-v1" if transport == "quic" else f"/{security}" if security == "noise" else "/tls/1.0.0"
        if connection_kind != expected:  # the figure would be of another transport
            raise RuntimeError(f"connected to {target} with {connection_kind}, not {expected}")
        await (await client.connect(target)).close()
        if name == "handshakes/s":
            return await handshakes_per_second(client, target, duration)
        if name == "FIND_NODE/s, 1 connection":
            return await round_trips_one_connection(client, peer_info(target), duration)
        if name == f"FIND_NODE/s, {CONNECTIONS} connections":
            return await round_trips_many_connections(peer_info(target), duration, security)
        return await stream_megabytes_per_second(client, peer_info(target), STREAM_MIB[transport])


FIGURES = ["handshakes/s", "FIND_NODE/s, 1 connection", f"FIND_NODE/s, {CONNECTIONS} connections", "MB/s, 1 stream"]


async def run(duration: float, rounds: int, security: str, transport: str) -> str:
    from jspeer import NODE22, ensure_node_modules, start_js_peer

    ensure_node_modules()
    node = str(NODE22) if transport == "quic" else os.environ.get("NODE", "node")
    server = await anyio.open_process(
        [sys.executable, __file__, "--serve", "--security", security, "--transport", transport], stdin=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await server.stdout.receive(1)
        targets = {"ours": json.loads(line)["addr"]}
        js_limits = {"inboundConnectionThreshold": 1e9, "maxIncomingPendingConnections": 256, "maxConnections": 1024}
        async with start_js_peer(
            node,
            sink_protocol=SINK_PROTOCOL,
            connection_manager=js_limits,
            security=(security,),
            transports=(transport,),
            listen=[listen_addr(transport)],
        ) as js:
            targets["js"] = js.addr
            pids = {"ours": server.pid, "js": js._process.pid}
            # Both servers run throughout; each figure alternates between them, round
            # after round, so a change in the machine's load hits both alike.
            samples: dict[str, dict[str, list[float]]] = {"ours": {}, "js": {}}
            cpu: dict[str, dict[str, list[float]]] = {"ours": {}, "js": {}}
            global meter
            for name in FIGURES:
                for r in range(rounds):
                    for who in ("ours", "js") if r % 2 == 0 else ("js", "ours"):
                        meter = CpuMeter(pids[who])
                        value = await figure(name, targets[who], duration, security, transport)
                        note = "" if meter.per_op is None else f" ({meter.per_op * 1e3:.3f} ms server CPU per op)"
                        print(f"{name} {who} round {r + 1}/{rounds}: {value:,.1f}{note}", file=sys.stderr, flush=True)
                        samples[who].setdefault(name, []).append(value)
                        if meter.per_op is not None:
                            cpu[who].setdefault(name, []).append(meter.per_op)
    finally:
        if server.stdin is not None:
            await server.stdin.aclose()
        with anyio.move_on_after(5):
            await server.wait()
        if server.returncode is None:
            server.kill()
    ours = {k: statistics.median(v) for k, v in samples["ours"].items()}
    theirs = {k: statistics.median(v) for k, v in samples["js"].items()}
    cpu_ours = {k: statistics.median(v) for k, v in cpu["ours"].items()}
    cpu_theirs = {k: statistics.median(v) for k, v in cpu["js"].items()}
    return report(ours, theirs, duration, rounds, security, transport, node, (cpu_ours, cpu_theirs))


CPU_LABEL = {  # a figure's row in the CPU table: what one operation is
    "handshakes/s": "per handshake",
    "FIND_NODE/s, 1 connection": "per FIND_NODE, 1 connection",
    f"FIND_NODE/s, {CONNECTIONS} connections": f"per FIND_NODE, {CONNECTIONS} connections",
    "MB/s, 1 stream": "per MiB, 1 stream",
}


def report(
    ours: dict[str, float],
    theirs: dict[str, float],
    duration: float,
    rounds: int,
    security: str,
    transport: str,
    node: str,
    cpu: tuple[dict[str, float], dict[str, float]] = ({}, {}),
) -> str:
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "| figure | dhtstore | js-libp2p 3.2 | ours / js |",
        "|---|---:|---:|---:|",
    ]
    for name, value in ours.items():
        lines.append(f"| {name} | {value:,.1f} | {theirs[name]:,.1f} | {value / theirs[name]:.2f}× |")
    cpu_ours, cpu_theirs = cpu
    if cpu_ours and cpu_theirs:
        lines += ["", "| server CPU, ms | dhtstore | js-libp2p 3.2 | ours / js |", "|---|---:|---:|---:|"]
        for name, value in cpu_ours.items():
            if name in cpu_theirs:
                js_value = cpu_theirs[name]
                lines.append(f"| {CPU_LABEL[name]} | {value * 1e3:.3f} | {js_value * 1e3:.3f} | {value / js_value:.2f}× |")
    lines.append("")
    lines.append(
        ("Transport QUIC v1" if transport == "quic" else f"TCP, security {security}")
        + f"; loopback, {os.cpu_count()} cores, Python {platform.python_version()}, Node {version}, "
        f"median of {rounds} rounds alternating the two servers, {duration:g} s per measurement, "
        f"{STREAM_MIB[transport]} MiB through the stream; load average at the end {os.getloadavg()[0]:.1f}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure and server (default 3)")
    parser.add_argument("--security", choices=["noise", "tls"], default="noise", help="what every connection uses (default noise)")
    parser.add_argument("--transport", choices=["tcp", "quic"], default="tcp", help="TCP (with --security) or QUIC v1 (default tcp)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server subprocess
    args = parser.parse_args()
    if args.serve:
        anyio.run(serve, args.security, args.transport)
        return
    print(anyio.run(run, args.duration, args.rounds, args.security, args.transport))


if __name__ == "__main__":
    main()
