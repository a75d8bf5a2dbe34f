#!/usr/bin/env python3
"""The sending side of reproviding (issue 17): our client's CPU per ADD_PROVIDER over
real loopback connections, against our own servers.

What runs:
- the servers (a child process): ``--servers`` libp2p hosts of ours, each with the real
  ``KadServer`` (Noise, yamux, the kad codec and framing) and a handler that drops
  ADD_PROVIDER and answers FIND_NODE with itself, so the server side stays cheap and
  out of the figure; their per-peer rate limit is lifted;
- the client (this process): the sweep as the node runs it (``Reprovider`` with the
  real ``LibP2PKadMessenger`` on a ``Host``), on the in-memory provide list (the SQL
  store's cost is ``bench_reprovide_sqlite.py``'s figure), lookups answered by an exact
  oracle over the servers. It provides ``--cids`` CIDs: each goes to its 20 closest
  servers, one ADD_PROVIDER each on the one reused stream per server, confirmed by a
  FIND_NODE every ``confirm_every`` of them and after the last.

Reference in the same process, first: the same first provide with ``--provider-only``'s
messenger (counted and dropped), so the difference is the network path's cost per
message. Printed: client CPU per ADD_PROVIDER (all, and the network path's share),
messages per client CPU-second, connections and streams opened (one each per server
expected), the servers' own count of ADD_PROVIDER received. Checks, and fails loudly:
every message sent was received (≈ 20 per CID), one stream per server.

    python scripts/bench_provide_client.py --servers 60 --cids 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_reprovide import CountingMessenger, multihashes  # noqa: E402
from bench_server import cpu_seconds, peak_rss_mb, peer_info, read_json_line  # noqa: E402

from dhtstore.amino import PROTOCOL_ID  # noqa: E402
from dhtstore.crypto.keys import PrivateKey  # noqa: E402
from dhtstore.kadkey import Key  # noqa: E402
from dhtstore.multihash import cid_string  # noqa: E402
from dhtstore.network import multiaddrs  # noqa: E402
from dhtstore.network.api import HostLimits, ResourceLimits, ScopeLimits  # noqa: E402
from dhtstore.network.host import Host  # noqa: E402
from dhtstore.network.kadmessenger import LibP2PKadMessenger  # noqa: E402
from dhtstore.provider.memory import MemoryClaimStore, MemoryProvideList  # noqa: E402
from dhtstore.provider.reprovider import Reprovider  # noqa: E402
from dhtstore.server.api import RequestHandler  # noqa: E402
from dhtstore.server.kadserver import KadServer  # noqa: E402
from dhtstore.types import Message, MessageType, PeerInfo  # noqa: E402

UNLIMITED = HostLimits(high_water=4096, low_water=4096, resources=ResourceLimits(system=ScopeLimits(), ip=ScopeLimits(), peer=ScopeLimits()))
EXPECTED_SENDS = 20


# -- the servers (a child process) ----------------------------------------------------------


class DropAdds(RequestHandler):
    def __init__(self, me: PeerInfo):
        self.me = me
        self.adds = 0

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        if request.type is MessageType.ADD_PROVIDER:
            self.adds += 1
            return None
        return Message(request.type, key=request.key, closer_peers=(self.me,))


async def serve(count: int) -> None:
    async with AsyncExitStack() as stack:
        handlers = []
        addrs = []
        for _ in range(count):
            host = await stack.enter_async_context(Host(PrivateKey.generate(), ["/ip4/127.0.0.1/tcp/0"], limits=UNLIMITED))
            me = PeerInfo(host.peer_id, tuple(a.to_bytes() for a in host.listen_addrs))
            handler = DropAdds(me)
            server = KadServer(host, handler)
            server.limiter.rate, server.limiter.burst = 1e9, 2e9
            server.start()
            handlers.append(handler)
            addrs.append(str(multiaddrs.with_peer_id(host.listen_addrs[0], host.peer_id)))
        print(json.dumps({"addrs": addrs}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        print(json.dumps({"adds": sum(h.adds for h in handlers)}), flush=True)


# -- the client ---------------------------------------------------------------------------


class ExactDHT:
    """The exact k closest of the given servers."""

    def __init__(self, peers: list[PeerInfo]):
        self.peers = [(Key.for_peer(p.peer_id).value, p) for p in peers]
        self.lookups = 0

    async def find_closest_peers(self, key: bytes, n: int = 20) -> list[PeerInfo]:
        self.lookups += 1
        target = Key.hash(key).value
        return [p for _, p in sorted(self.peers, key=lambda kp: kp[0] ^ target)[:n]]


class Counted:
    """Counts what goes through a messenger."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.sent = 0
        self.requests = 0

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        self.requests += 1
        return await self.inner.request(peer, message)

    async def send(self, peer: PeerInfo, message: Message) -> None:
        self.sent += 1
        await self.inner.send(peer, message)


async def first_provide(messenger: Any, dht: ExactDHT, me: PeerInfo, n: int) -> dict[str, float]:
    claims = MemoryClaimStore()
    store = MemoryProvideList(claims)
    counted = Counted(messenger)
    r = Reprovider(store, claims, dht, counted, lambda: me, clock=time.time)
    await r.start_provide([cid_string(mh) for mh in multihashes(n)])
    cpu, wall = time.process_time(), time.monotonic()
    await r.run_due()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    status = await r.status()
    return {"cpu": cpu, "wall": wall, "sent": counted.sent, "confirms": counted.requests, "provided": status.keys - status.pending}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    process = await anyio.open_process(
        [sys.executable, __file__, "--serve", str(args.servers)], stdin=subprocess.PIPE, stderr=None
    )
    async with process:
        peers = [peer_info(a) for a in (await read_json_line(process))["addrs"]]
        dht = ExactDHT(peers)
        me_key = PrivateKey.generate()
        me = PeerInfo(me_key.peer_id(), (bytes.fromhex("047f000001060fa1"),))
        reference = await first_provide(CountingMessenger(), dht, me, args.cids)
        print(f"reference (no network): {reference}", flush=True)
        async with Host(me_key, limits=UNLIMITED) as host:
            streams = 0
            new_stream = host.new_stream

            async def counting_new_stream(peer: PeerInfo, protocols: Any, *a: Any, **kw: Any) -> Any:
                nonlocal streams
                streams += PROTOCOL_ID in protocols  # identify opens its own
                return await new_stream(peer, protocols, *a, **kw)

            host.new_stream = counting_new_stream  # type: ignore[method-assign]
            server_cpu = cpu_seconds(process.pid)
            real = await first_provide(LibP2PKadMessenger(host), dht, me, args.cids)
            server_cpu = cpu_seconds(process.pid) - server_cpu
            connections = len(host._connections)
        print(f"loopback: {real}", flush=True)
        assert process.stdin is not None
        await process.stdin.send(b"report\n")
        received = (await read_json_line(process))["adds"]
        rss = peak_rss_mb(os.getpid())
        await process.stdin.aclose()
        await process.wait()
    return {
        "reference": reference, "real": real, "streams": streams, "connections": connections,
        "received": received, "server_cpu": server_cpu, "rss": rss,
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    ref, real = r["reference"], r["real"]
    per_msg = real["cpu"] / real["sent"] * 1e6
    ref_per_msg = ref["cpu"] / ref["sent"] * 1e6
    problems = []
    if abs(real["sent"] / args.cids - EXPECTED_SENDS) > 0.1 or real["provided"] != args.cids:
        problems.append(f"{real['sent'] / args.cids:.2f} ADD_PROVIDER per CID, {real['provided']} of {args.cids} provided")
    if r["received"] != real["sent"]:
        problems.append(f"the servers received {r['received']:,} of {real['sent']:,} ADD_PROVIDER")
    if r["streams"] > args.servers:
        problems.append(f"{r['streams']} kad streams opened for {args.servers} servers (one each expected)")
    load = os.getloadavg()
    lines = [
        f"### Sending ADD_PROVIDER over loopback: {args.cids:,} CIDs to {args.servers} servers of ours",
        "",
        f"`python scripts/bench_provide_client.py --servers {args.servers} --cids {args.cids}` — {time.strftime('%Y-%m-%d')}, "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end.",
        "",
        "| first provide, client process | no network (reference) | real connections (Noise, yamux) |",
        "|---|---:|---:|",
        f"| ADD_PROVIDER sent | {ref['sent']:,} | {real['sent']:,} |",
        f"| confirming FIND_NODEs | {ref['confirms']:,} | {real['confirms']:,} |",
        f"| client CPU (s) | {ref['cpu']:.1f} | {real['cpu']:.1f} |",
        f"| client CPU per ADD_PROVIDER (µs) | {ref_per_msg:.1f} | **{per_msg:.1f}** |",
        f"| ADD_PROVIDER per client CPU-second | {1e6 / ref_per_msg:,.0f} | {1e6 / per_msg:,.0f} |",
        "",
        f"- The network path costs {per_msg - ref_per_msg:.1f} µs of client CPU per ADD_PROVIDER "
        f"({(per_msg - ref_per_msg) / per_msg:.0%} of the total); wall {real['wall']:.1f} s.",
        f"- {r['connections']} connections and {r['streams']} kad streams for {args.servers} servers; "
        f"the servers received {r['received']:,} ADD_PROVIDER; their CPU meanwhile {r['server_cpu']:.1f} s "
        f"({r['server_cpu'] / max(real['sent'], 1) * 1e6:.1f} µs per message, a handler that drops them).",
        f"- Client peak RSS {r['rss']:.0f} MB (the in-memory list of {args.cids:,} CIDs included).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if problems:
        sys.exit("benchmark check failed: " + "; ".join(problems))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=60)
    ap.add_argument("--cids", type=int, default=20_000)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--append", type=Path, help="append the results section to this file (BENCHMARKS.md)")
    args = ap.parse_args()
    if args.serve:
        anyio.run(serve, args.serve)
        return
    text = report(args, anyio.run(run, args))
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
