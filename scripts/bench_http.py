#!/usr/bin/env python3
"""Delegated Routing V1 HTTP API benchmark on loopback: ``GET /routing/v1/providers``.

    python scripts/bench_http.py                    # 3000 requests per phase
    python scripts/bench_http.py --requests 10000 --concurrency 32

The server process (pinned to one core) runs two real ``Node``s: B, with a SQLite
store pre-filled with ``--store-keys`` provider records and the HTTP API (production
code, limits lifted so the rate limiter does not refuse the load), and A, in memory,
which alone holds ``--network-keys`` other records. The load generator (another
process, on another core when there is one) keeps ``--concurrency`` requests in
flight over keep-alive connections, in three phases:

- cached:   one key again and again (the provider store's read cache answers);
- store:    a different stored key each request (a SQL read each);
- network:  a key only A holds: B's store misses, B looks it up in the DHT (A).

Printed: requests/s and p50/p99 latency per phase. The run checks itself: every
answer must be 200 with the expected provider, and the server's counters must show
each phase's requests answered from where the phase says (``ok_store`` or
``ok_network``); otherwise it exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtstore import multihash


def cid_of(tag: str, i: int) -> str:
    mh = multihash.Multihash(multihash.SHA2_256, hashlib.sha256(f"{tag} {i}".encode()).digest()).to_bytes()
    return multihash.cid_string(mh)


def pin(cpu: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


def server_main(conn: Connection, store_keys: int, network_keys: int) -> None:
    pin(0)
    import anyio

    anyio.run(_serve, conn, store_keys, network_keys)


async def _serve(conn: Connection, store_keys: int, network_keys: int) -> None:
    from contextlib import AsyncExitStack

    from dhtstore.cli.run import _routing_api
    from dhtstore.crypto.keys import PrivateKey
    from dhtstore.data.engine import default_store_url
    from dhtstore.data.schema import create_or_upgrade
    from dhtstore.httpapi.api import HttpLimits
    from dhtstore.httpapi.server import RoutingApi
    from dhtstore.network import multiaddrs
    from dhtstore.node import Node, NodeOptions

    def options(store: str | None, bootstrap: list[str]) -> NodeOptions:
        return NodeOptions(
            identity=PrivateKey.generate(), store_url=store, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=bootstrap,
            mode="server", allow_private_addrs=True, ip_diversity=False, reprovide=False,
        )

    with tempfile.TemporaryDirectory() as tmp:
        url = default_store_url(Path(tmp))
        await create_or_upgrade(url)
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(Node.start(options(None, [])))
            b = await stack.enter_async_context(Node.start(options(url, [a.addresses()[0]])))
            await b.upkeep.bootstrapped.wait()
            addr = multiaddrs.parse("/ip4/192.0.2.1/tcp/4001").to_bytes()
            store_provider, network_provider = PrivateKey.generate().peer_id(), PrivateKey.generate().peer_id()
            await asyncio.gather(*(b.providers.add_provider(multihash.from_cid(cid_of("store", i)), store_provider, (addr,)) for i in range(store_keys)))
            for i in range(network_keys):
                await a.providers.add_provider(multihash.from_cid(cid_of("network", i)), network_provider, (addr,))
            base = _routing_api(b)
            api = RoutingApi(b, base.local, HttpLimits(rate=1e9, burst=10**9, max_lookups=1024))
            host, port = await stack.enter_async_context(api.serve("127.0.0.1", 0))
            conn.send({"url": f"http://{host}:{port}", "store": str(store_provider), "network": str(network_provider)})
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
            conn.send({f"{e}/{o}": n for (e, o), n in api.requests().items()})


async def load(url: str, cids: list[str], expect: str, concurrency: int) -> tuple[float, list[float], int]:
    """requests/s, latencies (ms), wrong answers."""
    latencies: list[float] = []
    wrong = 0
    queue = iter(cids)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal wrong
            for cid in queue:
                start = time.perf_counter()
                async with http.get(f"{url}/routing/v1/providers/{cid}") as response:
                    body = await response.read()
                latencies.append((time.perf_counter() - start) * 1000)
                if response.status != 200 or [p["ID"] for p in json.loads(body)["Providers"]] != [expect]:
                    wrong += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(cids) / elapsed, latencies, wrong


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per phase (the network phase: a third)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--store-keys", type=int, default=3000)
    args = parser.parse_args()
    network_requests = max(1, args.requests // 3)
    store_requests = min(args.requests, args.store_keys)

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=server_main, args=(child, args.store_keys, network_requests))
    server.start()
    info: dict[str, Any] = parent.recv()
    pin(1)
    phases = [
        ("cached", [cid_of("store", 0)] * args.requests, info["store"]),
        ("store", [cid_of("store", i) for i in range(store_requests)], info["store"]),
        ("network", [cid_of("network", i) for i in range(network_requests)], info["network"]),
    ]
    ok = True
    print(f"{'phase':8} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'wrong':>6}")
    for name, cids, expect in phases:
        if name == "cached":  # warm the read cache and the connections
            asyncio.run(load(info["url"], cids[:50], expect, args.concurrency))
        rate, latencies, wrong = asyncio.run(load(info["url"], cids, expect, args.concurrency))
        ok &= wrong == 0
        print(f"{name:8} {len(cids):8d} {rate:8.0f} {pct(latencies, 50):8.1f} {pct(latencies, 99):8.1f} {wrong:6d}")
    parent.send("stop")
    counters: dict[str, int] = parent.recv()
    server.join(30)
    expected_store = args.requests + 50 + store_requests
    counted = (counters.get("providers/ok_store", 0), counters.get("providers/ok_network", 0))
    print(f"server counters: {counters}")
    if counted != (expected_store, network_requests):
        print(f"FAIL: expected ok_store={expected_store} ok_network={network_requests}, counted {counted}")
        ok = False
    print("self-check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
