#!/usr/bin/env python3
"""Kademlia server benchmark on loopback (issue 5): our node against js-libp2p's
kad-dht, under the same load generator, in one run.

    python scripts/bench_server.py                          # 1M records, 10 s per run
    python scripts/bench_server.py --records 100000 --duration 5 --types miss,hit --connections 8
    python scripts/bench_server.py --loops asyncio,uvloop --store postgresql
    python scripts/bench_server.py --profile /tmp/ours.prof  # cProfile of our node

What runs, each in its own process:
- our server: a real ``dhtstore`` ``Node`` (server mode, production defaults,
  reprovider on with an empty list) on a SQLite or PostgreSQL store pre-filled with
  ``--records`` provider records (1,000 providers with addresses), written with
  direct SQL inserts through the data tier's models in one transaction;
- the js server: js-libp2p 3.2 with kad-dht 16.2 in Node.js (tests/interop/js), its
  provider store in memory;
- the load generator: client hosts of ours (``--connections``, 8 and 32 by
  default), each with one connection and one kad stream reused for every request
  (as go's message sender does), in closed loop, one request type per run
  (``--types``): FIND_NODE (a random key), GET_PROVIDERS miss (a random key),
  GET_PROVIDERS hit (a stored key: one of the ``--records`` pre-filled ones for us;
  for js, one of ``--js-records`` keys the load generator announced to it first, as
  its store cannot be pre-filled), GET_PROVIDERS hit from the cache ("hot": one of the
  first 100 of those keys, which fit the provider-set cache of 256), ADD_PROVIDER (ten new keys, then a PING: both
  servers handle one stream's requests in order, so the PING's reply marks the ten
  as processed, ours committed to the store). Our server's per-peer rate limit is
  raised for the run (``--rate-limit``) so that CPU is the limit;
- the routing-table peers: ``--table-peers`` (20) small DHT servers of ours that
  connect to the server under test before the load starts, so FIND_NODE and
  GET_PROVIDERS answer with closer peers as on a real network.

Printed per type and connection count: requests per server CPU-second (the
server's CPU time from /proc over the run) for each server and the ratio ours/js,
requests/s and p50/p99 latency; peak RSS (VmHWM), the load generator's CPU use (if
near 100 %, the client is the bottleneck, not the server) and our server's counters.
A run that did not measure what it claims (a hit answered without providers, a miss
with them, FIND_NODE without closer peers) stops the benchmark. ``--loops
asyncio,uvloop`` runs our server once per event loop; ``--store postgresql`` puts
its store in a scratch database on ``--pg-url``. Figures are printed, not asserted;
BENCHMARKS.md records them. Needs Node.js and ``npm ci`` in tests/interop/js
(done on demand).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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
from dhtstore.network.api import HostLimits, ResourceLimits, ScopeLimits  # noqa: E402
from dhtstore.network.host import Host  # noqa: E402
from dhtstore.network.kadcodec import FrameDecoder, encode_frame  # noqa: E402
from dhtstore.node import Node, NodeOptions  # noqa: E402
from dhtstore.providerstore.validation import base58btc  # noqa: E402
from dhtstore.server.api import RequestHandler  # noqa: E402
from dhtstore.server.kadserver import KadServer  # noqa: E402
from dhtstore.types import Message, MessageType, PeerInfo  # noqa: E402
from scratchdb import DEFAULT_PG_URL, scratch_database  # noqa: E402

PROVIDERS = 1000  # distinct provider peers in the pre-filled store
ADDR = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001
FILL_BATCH = 50_000
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


async def serve(store_url: str, profile: str | None, rate_limit: float) -> None:
    options = NodeOptions(
        identity=PrivateKey.generate(),
        store_url=store_url,
        listen=["/ip4/127.0.0.1/tcp/0"],
        mode="server",
        allow_private_addrs=True,  # every peer here is on loopback
        ip_diversity=False,
        reprovide=True,  # as in production: every GET_PROVIDERS asks the (empty) provide list too
        # Every client and table peer dials from 127.0.0.1: the per-IP limits would
        # refuse all but 8 of them, so the system, IP and peer scopes are unlimited here.
        limits=HostLimits(
            high_water=1024, low_water=1024, resources=ResourceLimits(system=ScopeLimits(), ip=ScopeLimits(), peer=ScopeLimits())
        ),
    )
    profiler = None
    if profile:
        import cProfile

        # CPU time of the event-loop thread: on a busy machine, wall time would charge
        # the time we were preempted to whatever function happened to be running.
        profiler = cProfile.Profile(time.thread_time)
    async with Node.start(options) as node:
        node.kadserver.limiter.rate, node.kadserver.limiter.burst = rate_limit, 2 * rate_limit
        counters = node.providers.counters
        if not getattr(node.providers, "shared", True):  # SQLite: the key filter's start-up build out of the figures
            with anyio.fail_after(WAIT * 5):
                while counters.get("key_filter_builds", 1) < 1:
                    await anyio.sleep(0.1)
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


class SelfAnswer(RequestHandler):
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

# The request types, each measured on its own (``--types``), and "mix": the three in turn.
MODES = ("find_node", "miss", "hit", "hot", "add_provider", "mix")
LABELS = {
    "find_node": "FIND_NODE",
    "miss": "GET_PROVIDERS miss",
    "hit": "GET_PROVIDERS hit",
    "hot": "GET_PROVIDERS hit (cached)",
    "add_provider": "ADD_PROVIDER",
    "mix": "mix (FIND_NODE, GET_PROVIDERS hit, ADD_PROVIDER + PING)",
}
ADDS_PER_PING = 10
HOT_KEYS = 100  # "hot" hits ask for the first 100 stored keys: they fit the provider-set cache (256)
DRAIN = 10.0  # seconds an open-loop run waits past its duration for the replies still due
RUNS = 0  # load runs started in this process  # ADD_PROVIDERs sent before each PING, as a go client's sweep does


class Connection:
    """One client host, its connection and its one kad stream, and its samples."""

    def __init__(self, host: Host, rng: random.Random, hit_keys: int):
        self.host = host
        self.rng = rng
        self.hit_keys = hit_keys  # GET_PROVIDERS hits ask for provider_key(0 … hit_keys-1)
        self.stream: Any = None
        self.decoder = FrameDecoder()
        self.latencies: list[float] = []  # one per exchange
        self.requests = 0  # kad requests answered or processed (PINGs after ADD_PROVIDERs not counted)
        self.answered_with_providers = 0
        self.closer_peers = 0
        self.unanswered = 0  # open loop: exchanges sent and not answered before the drain ended
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

    def _add_providers(self, keys: list[bytes]) -> bytes:
        adds = b"".join(encode_frame(Message(MessageType.ADD_PROVIDER, key=k, provider_peers=(self.me,))) for k in keys)
        return adds + encode_frame(Message(MessageType.PING))

    async def announce(self, keys: list[bytes]) -> None:
        """Store ``keys`` with us as provider (js's store cannot be pre-filled otherwise)."""
        for i in range(0, len(keys), ADDS_PER_PING):
            await self.exchange(self._add_providers(keys[i : i + ADDS_PER_PING]), MessageType.PING)

    def frames_for(self, mode: str) -> tuple[bytes, MessageType, int]:
        """One exchange of ``mode``: the frames to send, the reply type that ends it,
        and the kad requests it carries (ADD_PROVIDER: ten, then a PING)."""
        rng = self.rng
        if mode == "find_node":
            return encode_frame(Message(MessageType.FIND_NODE, key=b"\x12\x20" + rng.randbytes(32))), MessageType.FIND_NODE, 1
        if mode in ("hit", "hot", "miss"):
            key = provider_key(rng.randrange(self.hit_keys)) if mode != "miss" else Multihash(SHA2_256, rng.randbytes(32)).to_bytes()
            return encode_frame(Message(MessageType.GET_PROVIDERS, key=key)), MessageType.GET_PROVIDERS, 1
        keys = [Multihash(SHA2_256, rng.randbytes(32)).to_bytes() for _ in range(ADDS_PER_PING)]
        return self._add_providers(keys), MessageType.PING, ADDS_PER_PING

    def note(self, reply: Message, requests: int) -> None:
        self.answered_with_providers += bool(reply.provider_peers)
        self.closer_peers += len(reply.closer_peers)
        self.requests += requests

    async def request(self, mode: str) -> None:
        if mode == "mix":
            for part in ("find_node", "hit", "add_provider"):
                await self.request(part)
            return
        started = time.perf_counter()
        frames, expect, requests = self.frames_for(mode)
        self.note(await self.exchange(frames, expect), requests)
        self.latencies.append(time.perf_counter() - started)

    async def open_loop(self, mode: str, rate: float, started: float, deadline: float) -> None:
        """Send an exchange every 1/``rate`` s whatever the replies do (open loop), and
        time each from when it was due, not when it was sent: a server that falls
        behind is charged the queue it builds (no coordinated omission)."""
        dues, due_replies = anyio.create_memory_object_stream[float](max_buffer_size=math.inf)
        sent = answered = 0

        async def send() -> None:
            nonlocal sent
            async with dues:
                due = started + self.rng.random() / rate  # connections spread over the first interval
                for _ in range(MAX_CYCLES):
                    if due >= deadline:
                        return
                    await anyio.sleep(max(0.0, due - time.perf_counter()))
                    frames, _, _ = self.frames_for(mode)
                    dues.send_nowait(due)
                    sent += 1
                    await self.stream.send(frames)
                    due += 1 / rate

        async def receive() -> None:
            nonlocal answered
            _, expect, requests = self.frames_for(mode)
            with anyio.move_on_after(deadline - time.perf_counter() + DRAIN):
                async with due_replies:
                    async for due in due_replies:
                        while (reply := self.decoder.next_message()) is None:
                            self.decoder.receive_data(await self.stream.receive())
                        if reply.type is not expect:
                            raise RuntimeError(f"got a {reply.type.name} reply, expected {expect.name}")
                        self.latencies.append(time.perf_counter() - due)
                        answered += 1
                        self.note(reply, requests)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(receive)
        self.unanswered += sent - answered


async def load(target_addr: str, args: argparse.Namespace) -> None:
    target = peer_info(target_addr)
    rng = random.Random(args.seed)
    async with AsyncExitStack() as stack:
        conns = []
        for _ in range(args.connections):
            host = await stack.enter_async_context(Host(PrivateKey.generate()))
            conns.append(Connection(host, random.Random(rng.getrandbits(64)), args.hit_keys))
        for c in conns:  # one after another: js refuses a burst of simultaneous handshakes
            await c.open(target)
        if args.announce:
            keys = [provider_key(i) for i in range(args.announce)]
            async with anyio.create_task_group() as tg:
                for i, c in enumerate(conns):
                    tg.start_soon(c.announce, keys[i :: len(conns)])
        print(json.dumps({"ready": True}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent says "go"
        cpu0, started = time.process_time(), time.perf_counter()
        deadline = started + args.duration

        async def run(c: Connection) -> None:
            if args.rate:
                await c.open_loop(args.mode, args.rate / len(conns), started, deadline)
                return
            for _ in range(MAX_CYCLES):
                if time.perf_counter() >= deadline:
                    return
                await c.request(args.mode)

        async with anyio.create_task_group() as tg:
            for c in conns:
                tg.start_soon(run, c)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    print(json.dumps({
        "elapsed": elapsed,
        "cpu": cpu,
        "latencies": [x for c in conns for x in c.latencies],
        "requests": sum(c.requests for c in conns),
        "answered_with_providers": sum(c.answered_with_providers for c in conns),
        "closer_peers": sum(c.closer_peers for c in conns),
        "unanswered": sum(c.unanswered for c in conns),
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


async def measure(target_addr: str, server_pid: int, mode: str, connections: int, hit_keys: int, announce: int,
                  args: argparse.Namespace, rate: float = 0.0) -> dict[str, Any]:
    """Run the load workers of one mode against one server; merged figures. ``rate``:
    exchanges per second offered in open loop (0: closed loop)."""
    procs = max(1, args.load_procs)
    global RUNS
    RUNS += 1  # each run its own random keys: a miss must not ask for a key an earlier run added
    workers = [
        await start_python("--load", target_addr, "--mode", mode, "--connections", str(len(range(i, connections, procs))),
                           "--duration", str(args.duration), "--hit-keys", str(hit_keys), "--seed", str(RUNS * 1000 + i),
                           "--announce", str(announce if i == 0 else 0),
                           "--rate", str(rate * len(range(i, connections, procs)) / connections))
        for i in range(procs)
    ]
    try:
        for w in workers:
            await read_json_line(w)  # ready: connected, stream open (and js's keys announced)
        cpu_before, started = cpu_seconds(server_pid), time.perf_counter()
        for w in workers:
            assert w.stdin is not None
            await w.stdin.send(b"go\n")
        results = [await read_json_line(w) for w in workers]
        elapsed = time.perf_counter() - started
        server_cpu = cpu_seconds(server_pid) - cpu_before
    finally:
        for w in workers:
            await stop(w)
    samples = sorted(x for r in results for x in r["latencies"])
    requests = sum(r["requests"] for r in results)
    asked = len(samples) or 1
    figures = {
        "rps": requests / elapsed,
        "per_cpu_second": requests / server_cpu if server_cpu else float("nan"),
        "server_cpu_share": server_cpu / elapsed,
        "load_cpu_share": sum(r["cpu"] / r["elapsed"] for r in results),
        "p50_ms": percentile(samples, 50) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "answered_with_providers": sum(r["answered_with_providers"] for r in results) / asked,
        "closer_peers": sum(r["closer_peers"] for r in results) / asked,
        "offered_rps": rate * requests / asked,  # requests per second offered (open loop)
        "unanswered": sum(r["unanswered"] for r in results),
    }
    check(mode, figures)
    return figures


def hit_keys(mode: str, stored: int) -> int:
    """How many of the stored keys a run's hits ask for (the first ones)."""
    return min(HOT_KEYS, stored) if mode == "hot" else stored


def exchange_rate(mode: str, figures: dict[str, Any]) -> float:
    """The exchanges per second a closed-loop run reached (ADD_PROVIDER: ten requests each)."""
    return float(figures["rps"]) / (ADDS_PER_PING if mode == "add_provider" else 1)


def check(mode: str, f: dict[str, Any]) -> None:
    """Fail loudly when a run did not measure what it claims to."""
    if mode in ("hit", "hot") and f["answered_with_providers"] < 0.99:
        raise SystemExit(f"GET_PROVIDERS hits answered with providers only {f['answered_with_providers']:.0%} of the time")
    if mode == "miss" and f["answered_with_providers"] > 0:
        raise SystemExit("a GET_PROVIDERS miss was answered with providers")
    if mode in ("find_node", "miss", "hit", "hot") and f["closer_peers"] < 1:
        raise SystemExit(f"{LABELS[mode]} answered with {f['closer_peers']:.1f} closer peers: the routing table is empty")
    if f["rps"] <= 0:
        raise SystemExit(f"{LABELS[mode]}: no request was answered")


async def connect_table_peers(peers: list[Host], target_addr: str) -> None:
    for host in peers:
        await host.connect(target_addr)


@asynccontextmanager
async def store(backend: str, pg_url: str) -> AsyncIterator[str]:
    """A fresh store URL: a SQLite file in a temporary directory, or a scratch PostgreSQL database."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
            yield default_store_url(Path(tmp))
        return
    async with scratch_database(pg_url, "bench_server") as url:
        yield url


async def run(args: argparse.Namespace) -> str:
    from jspeer import ensure_node_modules, start_js_peer

    ensure_node_modules()
    node_bin = os.environ.get("NODE", "node")
    modes = args.types.split(",")
    connection_counts = [int(n) for n in args.connections.split(",")]
    result: dict[str, Any] = {"load_average": os.getloadavg()[0], "ours": {}, "js": {}}
    async with store(args.store, args.pg_url) as store_url, table_peers(args.table_peers) as peers:
        result["fill_seconds"] = await fill_store(store_url, args.records)
        print(f"filled {args.records:,} provider records in {result['fill_seconds']:.1f} s", file=sys.stderr)
        for loop in args.loops.split(","):
            server = await start_python("--serve", store_url, "--loop", loop, "--rate-limit", str(args.rate_limit),
                                        *(["--profile", args.profile] if args.profile else []))
            try:
                ours_addr = (await read_json_line(server))["addr"]
                await connect_table_peers(peers, ours_addr)
                await anyio.sleep(2)  # identify and admission into the routing table
                for mode in modes:
                    for n in connection_counts:
                        keys = hit_keys(mode, args.records)
                        closed = result["ours"][f"{loop} {mode} {n}"] = await measure(ours_addr, server.pid, mode, n, keys, 0, args)
                        if args.open_loop:
                            result["ours"][f"{loop} {mode} {n} open"] = await measure(
                                ours_addr, server.pid, mode, n, keys, 0, args, rate=args.open_loop * exchange_rate(mode, closed)
                            )
                        print(f"ours ({loop}) {mode} {n} done", file=sys.stderr)
                result[f"ours_rss_mb {loop}"] = peak_rss_mb(server.pid)
                assert server.stdin is not None
                await server.stdin.send(b"report\n")
                result[f"ours_server {loop}"] = served = await read_json_line(server)
                if "hot" in modes and not served["provider_store"].get("cache_hits"):
                    raise SystemExit("the cached hits were never answered from the provider-set cache")
            finally:
                await stop(server)
        manager = {"inboundConnectionThreshold": 10_000, "maxIncomingPendingConnections": 100, "maxConnections": 1000}
        async with start_js_peer(node_bin, connection_manager=manager) as js:
            await connect_table_peers(peers, js.addr)
            await anyio.sleep(2)
            result["js_routing_table"] = len(await js.routing_table())
            announced = 0
            for mode in modes:
                for n in connection_counts:
                    announce = args.js_records - announced if mode in ("hit", "hot", "mix") else 0
                    keys = hit_keys(mode, args.js_records)
                    closed = result["js"][f"{mode} {n}"] = await measure(js.addr, js._process.pid, mode, n, keys, announce, args)
                    announced += announce
                    if args.open_loop:
                        result["js"][f"{mode} {n} open"] = await measure(
                            js.addr, js._process.pid, mode, n, keys, 0, args, rate=args.open_loop * exchange_rate(mode, closed)
                        )
                    print(f"js {mode} {n} done", file=sys.stderr)
            result["js_rss_mb"] = peak_rss_mb(js._process.pid)
    if args.json:
        return json.dumps(result, indent=2)
    return report(result, args)


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    version = subprocess.run([os.environ.get("NODE", "node"), "--version"], capture_output=True, text=True).stdout.strip()
    loops = args.loops.split(",")
    head = " | ".join(f"dhtstore ({loop}) per CPU-s | ours / js" for loop in loops)
    lines = [
        f"| request | conns | {head} | js-libp2p per CPU-s | dhtstore req/s, p50 / p99 ms | js req/s, p50 / p99 ms |",
        "|---|---:|" + "---:|---:|" * len(loops) + "---:|---:|---:|",
    ]
    for mode in args.types.split(","):
        for n in args.connections.split(","):
            j = r["js"][f"{mode} {n}"]
            cells = []
            for loop in loops:
                o = r["ours"][f"{loop} {mode} {n}"]
                cells.append(f"{o['per_cpu_second']:,.0f} | {o['per_cpu_second'] / j['per_cpu_second']:.2f}×")
            first = r["ours"][f"{loops[0]} {mode} {n}"]
            lines.append(
                f"| {LABELS[mode]} | {n} | {' | '.join(cells)} | {j['per_cpu_second']:,.0f} | "
                f"{first['rps']:,.0f}, {first['p50_ms']:.1f} / {first['p99_ms']:.1f} | "
                f"{j['rps']:,.0f}, {j['p50_ms']:.1f} / {j['p99_ms']:.1f} |"
            )
    if args.open_loop:
        lines += [
            "",
            (f"Open loop at {args.open_loop:.0%} of each server's own saturating rate (the closed-loop run's), latency from"
             " when each exchange was due:"),
            "",
            "| request | conns | " + " | ".join(f"dhtstore ({loop}) offered → answered req/s, p50 / p99 ms" for loop in loops)
            + " | js offered → answered req/s, p50 / p99 ms |",
            "|---|---:|" + "---:|" * (len(loops) + 1),
        ]
        for mode in args.types.split(","):
            for n in args.connections.split(","):
                cells = [open_cell(r["ours"][f"{loop} {mode} {n} open"]) for loop in loops] + [open_cell(r["js"][f"{mode} {n} open"])]
                lines.append(f"| {LABELS[mode]} | {n} | {' | '.join(cells)} |")
    lines.append("")
    for loop in loops:
        server = r[f"ours_server {loop}"]
        lines.append(
            f"- dhtstore ({loop}): peak RSS {r[f'ours_rss_mb {loop}']:.0f} MB, routing table {server['routing_table']}, "
            f"rate-limited {server['throttled']}, invalid {server['kadserver'].get('invalid_requests', 0)}, "
            f"provider sets from the cache {server['provider_store'].get('cache_hits', 0)}, "
            f"provider-store transactions {server['provider_store'].get('transactions', 0)} for "
            f"{server['provider_store'].get('records_written', 0)} records"
        )
    busiest = max(x["load_cpu_share"] for side in ("ours", "js") for x in r[side].values())
    lines += [
        f"- js-libp2p: peak RSS {r['js_rss_mb']:.0f} MB, routing table {r['js_routing_table']}, "
        f"{args.js_records:,} keys announced to it for its hits (its store cannot be pre-filled)",
        f"- the load generator's busiest run used {busiest:.0%} of a core ({args.load_procs} process(es))",
        f"- {args.store}: {args.records:,} provider records pre-filled in {r['fill_seconds']:.1f} s; "
        f"{args.duration:g} s per run; our per-peer rate limit {args.rate_limit:g}/s; {args.table_peers} routing-table peers",
        f"- loopback, {os.cpu_count()} cores (load average {r['load_average']:.1f} when the run started: other "
        f"processes' share of the cores), Python {platform.python_version()}, Node {version}",
    ]
    return "\n".join(lines)


def open_cell(f: dict[str, Any]) -> str:
    lost = f", {f['unanswered']} unanswered" if f["unanswered"] else ""
    return f"{f['offered_rps']:,.0f} → {f['rps']:,.0f}, {f['p50_ms']:.1f} / {f['p99_ms']:.1f}{lost}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="provider records pre-filled (default 1M)")
    parser.add_argument("--js-records", type=int, default=20_000, help="keys announced to js for its hits (default 20k)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (default 10)")
    parser.add_argument("--types", default="find_node,miss,hit,add_provider",
                        help=f"request types, each measured on its own, of {','.join(MODES)}")
    parser.add_argument("--connections", default="8,32", help="client connection counts, one run each (default 8,32)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL,
                        help="a PostgreSQL server to create the scratch database on")
    parser.add_argument("--loops", default="asyncio", help="event loops of our server, one run each: asyncio,uvloop")
    parser.add_argument("--rate-limit", type=float, default=1e6,
                        help="our per-peer request rate limit for the run (default: high, so CPU is the limit)")
    parser.add_argument("--load-procs", type=int, default=1, help="load generator processes sharing the connections")
    parser.add_argument("--table-peers", type=int, default=20, help="DHT servers in each server's routing table")
    parser.add_argument("--open-loop", type=float, default=0.0, metavar="FRACTION",
                        help="after each closed-loop run, one in open loop at FRACTION (e.g. 0.7) of its rate: p50/p99")
    parser.add_argument("--profile", metavar="FILE", help="cProfile our server during the load, into FILE")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument("--serve", metavar="STORE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--load", metavar="ADDR", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--hit-keys", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--announce", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.open_loop and ("mix" in args.types.split(",") or not 0 < args.open_loop <= 1):
        raise SystemExit("--open-loop takes a fraction in (0, 1], and not with the mix")
    if "uvloop" in args.loops.split(","):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise SystemExit("--loops uvloop needs uvloop: pip install uvloop (it is not a dependency of dhtstore)") from None
    if args.serve:
        anyio.run(serve, args.serve, args.profile, args.rate_limit, backend_options={"use_uvloop": args.loop == "uvloop"})
    elif args.load:
        args.connections = int(args.connections)
        anyio.run(load, args.load, args)
    else:
        print(anyio.run(run, args))


if __name__ == "__main__":
    main()
