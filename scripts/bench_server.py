#!/usr/bin/env python3
"""Kademlia server benchmark on loopback (issue 5): our node against js-libp2p's
kad-dht, under the same load generator, in one run.

    python scripts/bench_server.py                          # 1M records, 10 s per server
    python scripts/bench_server.py --records 100000 --duration 5
    python scripts/bench_server.py --profile /tmp/ours.prof  # cProfile of our node

What runs, each in its own process:
- our server: a real ``dhtstore`` ``Node`` (server mode, production defaults,
  including the per-peer rate limiter) on a SQLite store pre-filled with
  ``--records`` provider records (1,000 providers with addresses), written with
  direct SQL inserts through the data tier's models in one transaction;
- the js server: js-libp2p 3.2 with kad-dht 16.2 in Node.js (tests/interop/js), its
  provider store in memory and empty (it cannot be pre-filled from here);
- the load generator: ``--connections`` (32) client hosts of ours, each with one
  connection and one kad stream reused for every request (as go's message sender
  does), each sending in turn FIND_NODE (a random peer-id key), GET_PROVIDERS (a
  random key of the pre-filled ones) and ADD_PROVIDER (a new key, the client as
  provider). ADD_PROVIDER gets no reply, so it is followed on the same stream by a
  PING: both servers handle one stream's requests in order, so the PING's reply
  marks the ADD_PROVIDER as processed (ours: committed to SQLite);
- the routing-table peers: ``--table-peers`` (20) small DHT servers of ours that
  connect to the server under test before the load starts, so FIND_NODE and
  GET_PROVIDERS answer with closer peers as on a real network.

Printed: requests/s and p50/p99 latency per type for each server, the ratio
ours/js, peak RSS (VmHWM) of each server process, the load generator's CPU use (if
near 100 %, the client is the bottleneck, not the server) and our server's
counters (rate-limited requests, errors). Figures are printed, not asserted;
BENCHMARKS.md records them. Needs Node.js and ``npm ci`` in tests/interop/js
(done on demand).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from dhtstore.amino import PROTOCOL_ID, PROVIDE_VALIDITY, PROVIDER_ADDR_TTL  # noqa: E402
from dhtstore.crypto.keys import PrivateKey  # noqa: E402
from dhtstore.data.addrs import pack_addrs  # noqa: E402
from dhtstore.data.engine import default_store_url, make_engine  # noqa: E402
from dhtstore.data.models import PeerRow, ProviderRecordRow  # noqa: E402
from dhtstore.data.schema import create_or_upgrade  # noqa: E402
from dhtstore.multihash import SHA2_256, Multihash  # noqa: E402
from dhtstore.network import multiaddrs  # noqa: E402
from dhtstore.network.host import Host  # noqa: E402
from dhtstore.network.kadcodec import FrameDecoder, encode_frame  # noqa: E402
from dhtstore.node import Node, NodeOptions  # noqa: E402
from dhtstore.providerstore.validation import base58btc  # noqa: E402
from dhtstore.server.kadserver import KadServer  # noqa: E402
from dhtstore.types import Message, MessageType, PeerInfo  # noqa: E402

PROVIDERS = 1000  # distinct provider peers in the pre-filled store
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
FILL_BATCH = 50_000
TYPES = ("FIND_NODE", "GET_PROVIDERS", "ADD_PROVIDER")
MAX_CYCLES = 10_000_000  # bounds each connection's loop besides the duration
WAIT = 60.0  # seconds: bound on every start-up step


def provider_key(i: int) -> bytes:
    """The i-th pre-filled key: a sha2-256 multihash (js reads provider keys as CIDv0)."""
    return Multihash(SHA2_256, hashlib.sha256(i.to_bytes(8, "big")).digest()).to_bytes()


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peer_info(addr: str) -> PeerInfo:
    transport, peer = multiaddrs.split_peer_id(multiaddrs.parse(addr))
    assert peer is not None
    return PeerInfo(peer, (transport.to_bytes(),))


async def read_json_line(process: Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = b""
    with anyio.fail_after(WAIT * 5):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive(1)
            line += chunk
    return json.loads(line)


# -- the pre-filled store ------------------------------------------------------------


async def fill_store(url: str, records: int) -> float:
    """Write ``records`` provider records and their providers in one transaction; seconds taken."""
    await create_or_upgrade(url)
    started = time.perf_counter()
    now = int(time.time())
    peers = [PrivateKey.generate().peer_id().to_bytes() for _ in range(PROVIDERS)]
    peer_rows = [
        {"peer_id": p, "peer_id_text": base58btc(p), "addrs": pack_addrs((ADDR,)),
         "addrs_expire_at": now + int(PROVIDER_ADDR_TTL.total_seconds()), "protocols": "", "agent": "",
         "first_seen_at": now, "last_seen_at": now}
        for p in peers
    ]
    expires = now + int(PROVIDE_VALIDITY.total_seconds())
    keys = sorted(provider_key(i) for i in range(records))  # in primary-key order: appends to the b-tree
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(PeerRow.__table__.insert(), peer_rows)
            for start in range(0, records, FILL_BATCH):
                rows = [
                    {"key_mh": k, "peer_id": peers[(start + j) % PROVIDERS], "key_b58": base58btc(k),
                     "received_at": now, "expires_at": expires}
                    for j, k in enumerate(keys[start : start + FILL_BATCH])
                ]
                await conn.execute(ProviderRecordRow.__table__.insert(), rows)
    finally:
        await engine.dispose()
    return time.perf_counter() - started


# -- our server (a subprocess) ---------------------------------------------------------


async def serve(store_url: str, profile: str | None) -> None:
    options = NodeOptions(
        identity=PrivateKey.generate(),
        store_url=store_url,
        listen=["/ip4/127.0.0.1/tcp/0"],
        mode="server",
        allow_private_addrs=True,  # every peer here is on loopback
        ip_diversity=False,
        reprovide=False,
    )
    profiler = None
    if profile:
        import cProfile

        # CPU time of the event-loop thread: on a busy machine, wall time would charge
        # the time we were preempted to whatever function happened to be running.
        profiler = cProfile.Profile(time.thread_time)
    async with Node.start(options) as node:
        print(json.dumps({"addr": str(multiaddrs.with_peer_id(node.host.listen_addrs[0], node.peer_id))}), flush=True)
        if profiler:
            profiler.enable()
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent says "report"
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        report = {
            "routing_table": len(node.table),
            "throttled": node.kadserver.limiter.throttled,
            "kadserver": dict(node.kadserver.stats),
            "handler": {f"{k} {o}": n for (k, o), n in node.handler.counters.items()},
            "provider_store": dict(node.providers.counters),
        }
        print(json.dumps(report), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


# -- routing-table peers ---------------------------------------------------------------


class SelfAnswer:
    """A minimal DHT server: FIND_NODE and GET_PROVIDERS answered with itself."""

    def __init__(self, me: PeerInfo):
        self.me = me

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        if request.type is MessageType.ADD_PROVIDER:
            return None
        return Message(request.type, key=request.key, closer_peers=(self.me,))


@asynccontextmanager
async def table_peers(count: int) -> AsyncIterator[list[Host]]:
    async with AsyncExitStack() as stack:
        hosts = []
        for _ in range(count):
            host = await stack.enter_async_context(Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"]))
            me = PeerInfo(host.peer_id, tuple(a.to_bytes() for a in host.listen_addrs))
            KadServer(host, SelfAnswer(me)).start()
            hosts.append(host)
        yield hosts


# -- the load generator (a subprocess) ---------------------------------------------------


class Connection:
    """One client host, its connection and its one kad stream, and its samples."""

    def __init__(self, host: Host, rng: random.Random):
        self.host = host
        self.rng = rng
        self.stream: Any = None
        self.decoder = FrameDecoder()
        self.latencies: dict[str, list[float]] = {t: [] for t in TYPES}
        self.providers_found = 0
        self.closer_peers = 0
        self.me = PeerInfo(host.peer_id, (ADDR,))

    async def open(self, target: PeerInfo) -> None:
        self.stream = await self.host.new_stream(target, [PROTOCOL_ID])
        await self.exchange(encode_frame(Message(MessageType.PING)), MessageType.PING)

    async def exchange(self, frames: bytes, expect: MessageType) -> Message:
        await self.stream.send(frames)
        while (reply := self.decoder.next_message()) is None:
            self.decoder.receive_data(await self.stream.receive())
        if reply.type is not expect:
            raise RuntimeError(f"got a {reply.type.name} reply, expected {expect.name}")
        return reply

    async def cycle(self, records: int) -> None:
        rng = self.rng
        find_node = Message(MessageType.FIND_NODE, key=b"\x12\x20" + rng.randbytes(32))
        t0 = time.perf_counter()
        reply = await self.exchange(encode_frame(find_node), MessageType.FIND_NODE)
        t1 = time.perf_counter()
        self.closer_peers += len(reply.closer_peers)
        get = Message(MessageType.GET_PROVIDERS, key=provider_key(rng.randrange(records)))
        reply = await self.exchange(encode_frame(get), MessageType.GET_PROVIDERS)
        t2 = time.perf_counter()
        self.providers_found += bool(reply.provider_peers)
        add = Message(MessageType.ADD_PROVIDER, key=Multihash(SHA2_256, rng.randbytes(32)).to_bytes(), provider_peers=(self.me,))
        await self.exchange(encode_frame(add) + encode_frame(Message(MessageType.PING)), MessageType.PING)
        t3 = time.perf_counter()
        self.latencies["FIND_NODE"].append(t1 - t0)
        self.latencies["GET_PROVIDERS"].append(t2 - t1)
        self.latencies["ADD_PROVIDER"].append(t3 - t2)


async def load(target_addr: str, connections: int, duration: float, records: int, seed: int) -> None:
    target = peer_info(target_addr)
    rng = random.Random(seed)
    async with AsyncExitStack() as stack:
        conns = []
        for _ in range(connections):
            host = await stack.enter_async_context(Host(PrivateKey.generate()))
            conns.append(Connection(host, random.Random(rng.getrandbits(64))))
        for c in conns:  # one after another: js refuses a burst of simultaneous handshakes
            await c.open(target)
        print(json.dumps({"ready": True}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent says "go"
        cpu0, started = time.process_time(), time.perf_counter()
        deadline = started + duration

        async def run(c: Connection) -> None:
            for _ in range(MAX_CYCLES):
                if time.perf_counter() >= deadline:
                    return
                await c.cycle(records)

        async with anyio.create_task_group() as tg:
            for c in conns:
                tg.start_soon(run, c)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    print(json.dumps({
        "elapsed": elapsed,
        "cpu": cpu,
        "latencies": {t: [x for c in conns for x in c.latencies[t]] for t in TYPES},
        "get_providers_hits": sum(c.providers_found for c in conns),
        "closer_peers": sum(c.closer_peers for c in conns),
    }), flush=True)


# -- the orchestration -------------------------------------------------------------------


async def start_python(*args: str) -> Process:
    return await anyio.open_process([sys.executable, __file__, *args], stdin=subprocess.PIPE, stderr=None)


async def stop(process: Process) -> None:
    if process.stdin is not None:
        await process.stdin.aclose()
    with anyio.move_on_after(10):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def measure(target_addr: str, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run the load workers against one server; merged figures."""
    procs = max(1, args.load_procs)
    workers = [
        await start_python("--load", target_addr, "--connections", str(len(range(i, args.connections, procs))),
                           "--duration", str(args.duration), "--records", str(args.records), "--seed", str(i))
        for i in range(procs)
    ]
    try:
        for w in workers:
            await read_json_line(w)  # ready: connected, stream open
        cpu_before, started = cpu_seconds(server_pid), time.perf_counter()
        for w in workers:
            assert w.stdin is not None
            await w.stdin.send(b"go\n")
        results = [await read_json_line(w) for w in workers]
        server_cpu_share = (cpu_seconds(server_pid) - cpu_before) / (time.perf_counter() - started)
    finally:
        for w in workers:
            await stop(w)
    merged: dict[str, Any] = {
        "cpu_share": sum(r["cpu"] / r["elapsed"] for r in results),
        "server_cpu_share": server_cpu_share,
    }
    for t in TYPES:
        samples = sorted(x for r in results for x in r["latencies"][t])
        merged[t] = {
            "rps": sum(len(r["latencies"][t]) / r["elapsed"] for r in results),
            "p50_ms": percentile(samples, 50) * 1000,
            "p99_ms": percentile(samples, 99) * 1000,
            "n": len(samples),
        }
    cycles = merged["GET_PROVIDERS"]["n"] or 1
    merged["requests"] = 4 * sum(merged[t]["rps"] for t in TYPES) / 3  # three types and a PING per cycle
    merged["get_providers_hit_rate"] = sum(r["get_providers_hits"] for r in results) / cycles
    merged["closer_peers_per_find_node"] = sum(r["closer_peers"] for r in results) / cycles
    return merged


async def connect_table_peers(peers: list[Host], target_addr: str) -> None:
    for host in peers:
        await host.connect(target_addr)


async def run(args: argparse.Namespace) -> str:
    from jspeer import ensure_node_modules, start_js_peer

    ensure_node_modules()
    node_bin = os.environ.get("NODE", "node")
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        store_url = default_store_url(Path(tmp))
        fill_seconds = await fill_store(store_url, args.records)
        print(f"filled {args.records:,} provider records in {fill_seconds:.1f} s", file=sys.stderr)
        result: dict[str, Any] = {"fill_seconds": fill_seconds, "load_average": os.getloadavg()[0]}
        async with table_peers(args.table_peers) as peers:
            server = await start_python("--serve", store_url, *(["--profile", args.profile] if args.profile else []))
            try:
                ours_addr = (await read_json_line(server))["addr"]
                await connect_table_peers(peers, ours_addr)
                await anyio.sleep(2)  # identify and admission into the routing table
                result["ours"] = await measure(ours_addr, server.pid, args)
                result["ours_rss_mb"] = peak_rss_mb(server.pid)
                assert server.stdin is not None
                await server.stdin.send(b"report\n")
                result["ours_server"] = await read_json_line(server)
            finally:
                await stop(server)
            print("ours done", file=sys.stderr)
            manager = {"inboundConnectionThreshold": 10_000, "maxIncomingPendingConnections": 100, "maxConnections": 1000}
            async with start_js_peer(node_bin, connection_manager=manager) as js:
                await connect_table_peers(peers, js.addr)
                await anyio.sleep(2)
                result["js_routing_table"] = len(await js.routing_table())
                result["js"] = await measure(js.addr, js._process.pid, args)
                result["js_rss_mb"] = peak_rss_mb(js._process.pid)
    if args.json:
        return json.dumps(result, indent=2)
    return report(result, args)


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    version = subprocess.run([os.environ.get("NODE", "node"), "--version"], capture_output=True, text=True).stdout.strip()
    ours, js = r["ours"], r["js"]
    lines = [
        "| request | dhtstore req/s | js-libp2p req/s | ours / js | dhtstore p50 / p99 ms | js-libp2p p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in TYPES:
        o, j = ours[t], js[t]
        lines.append(
            f"| {t} | {o['rps']:,.0f} | {j['rps']:,.0f} | {o['rps'] / j['rps']:.2f}× | "
            f"{o['p50_ms']:.1f} / {o['p99_ms']:.1f} | {j['p50_ms']:.1f} / {j['p99_ms']:.1f} |"
        )
    server = r["ours_server"]
    lines += [
        "",
        f"- peak RSS: dhtstore {r['ours_rss_mb']:.0f} MB, js-libp2p {r['js_rss_mb']:.0f} MB",
        f"- server CPU during the load (share of one core): dhtstore {ours['server_cpu_share']:.0%}, "
        f"js-libp2p {js['server_cpu_share']:.0%}; load generator: {ours['cpu_share']:.0%} and {js['cpu_share']:.0%}",
        f"- requests per server CPU-second: dhtstore {ours['requests'] / ours['server_cpu_share']:,.0f}, "
        f"js-libp2p {js['requests'] / js['server_cpu_share']:,.0f} (all four types, PING included)",
        f"- GET_PROVIDERS answered with providers: dhtstore {ours['get_providers_hit_rate']:.0%} "
        f"(pre-filled store), js-libp2p {js['get_providers_hit_rate']:.0%} (empty store)",
        f"- closer peers per FIND_NODE: dhtstore {ours['closer_peers_per_find_node']:.1f} (table {server['routing_table']}), "
        f"js-libp2p {js['closer_peers_per_find_node']:.1f} (table {r['js_routing_table']})",
        f"- dhtstore counters: rate-limited {server['throttled']}, invalid {server['kadserver'].get('invalid_requests', 0)}, "
        f"provider-store transactions {server['provider_store'].get('transactions', 0)} for "
        f"{server['provider_store'].get('records_written', 0)} records",
        f"- {args.records:,} provider records pre-filled in {r['fill_seconds']:.1f} s; {args.connections} connections, "
        f"{args.load_procs} load process(es), {args.duration:g} s per server, {args.table_peers} routing-table peers",
        f"- loopback, {os.cpu_count()} cores (load average {r['load_average']:.1f} when the run started: other "
        f"processes' share of the cores), Python {platform.python_version()}, Node {version}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="provider records pre-filled (default 1M)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="client connections (default 32)")
    parser.add_argument("--load-procs", type=int, default=1, help="load generator processes sharing the connections")
    parser.add_argument("--table-peers", type=int, default=20, help="DHT servers in each server's routing table")
    parser.add_argument("--profile", metavar="FILE", help="cProfile our server during the load, into FILE")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument("--serve", metavar="STORE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--load", metavar="ADDR", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        anyio.run(serve, args.serve, args.profile)
    elif args.load:
        anyio.run(load, args.load, args.connections, args.duration, args.records, args.seed)
    else:
        print(anyio.run(run, args))


if __name__ == "__main__":
    main()
