#!/usr/bin/env python3
"""The full routing table (issue 15) on the simulated network, and its memory.

1. Crawl: a node with an empty full table and 3 bootstrap peers crawls the network
   (``rtrefresh.crawler``, parallelism 32); requests, our CPU and virtual time until
   nothing is left to visit, and the share of live servers then in the table.
2. One-hop lookups: ``find_closest_peers(key, 20)`` over the crawled table (the router's
   one-hop mode) against the iterative lookup of the same node's k-bucket table (the
   reference, same keys): exact answers (the true 20 closest live servers), recall,
   messages per lookup. Again after churn (10 % of servers replaced) without a re-crawl.
3. Memory and restart: 100k peers written to a SQLite store, then a fresh process
   imports the node, loads the table and answers one ``local_closest_peers``: RSS before
   and after the load, load time.

Checks its own results (the crawl covers every live server, one-hop costs fewer
messages than iterative) and appends the figures with the command to BENCHMARKS.md.

    python scripts/bench_fullrt.py                       # 2,000 nodes, 10 % unresponsive
    python scripts/bench_fullrt.py --nodes 10000 --unresponsive 0.3 --no-write
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dhtstore.kadkey import Key  # noqa: E402
from dhtstore.routing.router import KademliaRouter  # noqa: E402
from dhtstore.routingtable.fulltable import FullTable  # noqa: E402
from dhtstore.rtrefresh.crawler import Crawler, prefix_preimages  # noqa: E402
from dhtstore.sim import SimConfig, SimNetwork  # noqa: E402

MEMORY_PEERS = 100_000

MEMORY_CHILD = r"""
import json, sys, time, anyio
sys.path.insert(0, sys.argv[1])
import dhtstore.node  # the whole node's code, as a running node has it
from dhtstore.data.engine import make_engine
from dhtstore.kadkey import Key
from dhtstore.routingtable.fulltable import FullTable

def rss_mb(field="VmRSS"):  # VmHWM: this image's peak (ru_maxrss would count the parent's, from before exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024

async def main():
    engine = make_engine(sys.argv[2])
    base = rss_mb()
    base_peak = rss_mb("VmHWM")
    started = time.perf_counter()
    table = FullTable(Key(1), engine)
    n = await table.load()
    table.local_closest_peers(Key(12345), 20)
    took = time.perf_counter() - started
    await engine.dispose()
    print(json.dumps({"peers": n, "rss_base_mb": base, "rss_loaded_mb": rss_mb(), "load_s": took, "maxrss_before_mb": base_peak,
                      "maxrss_mb": rss_mb("VmHWM")}))

anyio.run(main)
"""


def bench_sim(nodes: int, unresponsive: float, lookups: int, seed: int) -> dict[str, Any]:
    net = SimNetwork(SimConfig(nodes=nodes, seed=seed, unresponsive=unresponsive))
    gc.collect()
    gc.freeze()
    preimages = prefix_preimages()
    me = net.node(0)
    table = FullTable(me.key, wall_clock=net.wall_clock)
    for peer in me.table.peers()[:3]:
        table.add(peer, 0.0)
    crawler = Crawler(table, me.messenger, parallelism=32, rate=1000, clock=net.now, wall_clock=net.wall_clock, preimages=preimages)

    async def crawl() -> int:
        rounds = 0
        while rounds < 10_000 and await crawler.crawl_round():
            rounds += 1
        return rounds

    sent, cpu, t0 = net.message_count(), time.process_time(), net.now()
    net.run(crawl)
    crawl_cpu, crawl_virtual, crawl_requests = time.process_time() - cpu, net.now() - t0, net.message_count() - sent
    live = {n.peer_id for n in net.live_nodes()} - {me.peer_id}
    covered = len(live & {p.peer_id for p in table.peers()}) / len(live)
    print("crawl", json.dumps({"requests": crawl_requests, "cpu_s": crawl_cpu, "virtual_s": crawl_virtual, "coverage": covered}), flush=True)

    one_hop = KademliaRouter(me.info, table, me.messenger, me.validator, clock=net.now, one_hop_min_peers=20)
    rng = random.Random(seed)

    def measure(label: str) -> dict[str, Any]:
        keys = [rng.randbytes(32) for _ in range(lookups)]
        out: dict[str, Any] = {}
        for name, router in (("one_hop", one_hop), ("iterative", me.router)):
            exact = recall = 0.0
            messages = 0
            cpu = time.process_time()

            async def run_all() -> list[list[Any]]:
                return [await router.find_closest_peers(k, 20) for k in keys]

            before = net.message_count()
            answers = net.run(run_all)
            messages = net.message_count() - before
            for key, got in zip(keys, answers, strict=True):
                truth = net.true_closest(Key.hash(key), 20, exclude=me.peer_id)
                ids = [p.peer_id for p in got]
                exact += ids == truth
                recall += len(set(ids) & set(truth)) / 20
            out[name] = {
                "exact": exact / lookups, "recall": recall / lookups, "messages_per_lookup": messages / lookups,
                "cpu_ms_per_lookup": 1000 * (time.process_time() - cpu) / lookups,
            }
        out["messages_ratio"] = out["one_hop"]["messages_per_lookup"] / out["iterative"]["messages_per_lookup"]
        print(label, json.dumps(out), flush=True)
        return out

    fresh = measure("fresh")
    net.churn(0.1)
    net.set_online(me, True)  # the node measured stays
    churned = measure("after 10% churn, no re-crawl")
    return {
        "nodes": nodes, "unresponsive": unresponsive, "lookups": lookups,
        "crawl": {
            "requests": crawl_requests, "requests_per_server": crawl_requests / (nodes - 1), "cpu_s": crawl_cpu,
            "virtual_s": crawl_virtual, "coverage_of_live": covered, "table": len(table),
        },
        "fresh": fresh, "churned": churned,
    }


def bench_memory(peers: int) -> dict[str, Any]:
    import anyio

    from dhtstore.data.engine import default_store_url, make_engine
    from dhtstore.data.schema import create_or_upgrade
    from dhtstore.peerid import PeerId
    from dhtstore.types import PeerInfo

    with tempfile.TemporaryDirectory() as tmp:
        url = default_store_url(Path(tmp))
        rng = random.Random(1)
        addrs = (bytes.fromhex("04c0a80001060fa1"), bytes.fromhex("04c0a8000191020fa1cd03"))  # tcp and quic-v1, as most servers

        async def fill() -> None:
            await create_or_upgrade(url)
            engine = make_engine(url)
            table = FullTable(Key(1), engine)
            for _ in range(peers):
                table.add(PeerInfo(PeerId(bytes([0, 0x24, 8, 1, 0x12, 0x20]) + rng.randbytes(32)), addrs), 0.0)
            await table.flush()
            await engine.dispose()

        anyio.run(fill)
        child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(ROOT), url], capture_output=True, text=True, check=True)
        result: dict[str, Any] = json.loads(child.stdout)
    result["table_mb"] = result["rss_loaded_mb"] - result["rss_base_mb"]
    result["bytes_per_peer"] = result["table_mb"] * 2**20 / result["peers"]
    print("memory", json.dumps(result), flush=True)
    return result


def write(results: dict[str, Any], command: str) -> None:
    sim, mem = results["sim"], results["memory"]
    c = sim["crawl"]
    lines = [
        "",
        f"### {time.strftime('%Y-%m-%d')}, {sim['nodes']:,} nodes, {sim['unresponsive']:.0%} unresponsive, {sim['lookups']} lookups",
        "",
        f"`{command}`",
        "",
        f"Crawl from 3 bootstrap peers until nothing is due: {c['requests']:,} requests "
        f"({c['requests_per_server']:.1f} per server; 16 per answering one), {c['cpu_s']:.1f} s of our CPU, "
        f"{c['virtual_s']:.0f} s of simulated time; the table then holds {c['coverage_of_live']:.1%} of the live servers.",
        "",
        "| lookups | exact (true 20 closest) | recall | messages / lookup | ratio to iterative |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("fresh table", "fresh"), ("after 10 % churn, no re-crawl", "churned")):
        for name in ("one_hop", "iterative"):
            r = sim[key][name]
            ratio = f"{sim[key]['messages_ratio']:.2f}" if name == "one_hop" else "1 (reference)"
            lines.append(f"| {label}: {name.replace('_', '-')} | {r['exact']:.1%} | {r['recall']:.3f} | {r['messages_per_lookup']:.1f} | {ratio} |")
    lines += [
        "",
        f"Memory: {mem['peers']:,} peers loaded from SQLite by a process that imported the node: RSS "
        f"{mem['rss_base_mb']:.0f} -> {mem['rss_loaded_mb']:.0f} MB ({mem['bytes_per_peer']:.0f} bytes per peer, "
        f"{mem['rss_loaded_mb'] / mem['rss_base_mb']:.2f}x the process without the table); peak RSS "
        f"{mem['maxrss_mb']:.0f} MB against {mem['maxrss_before_mb']:.0f} MB before the load (the imports' own peak); "
        f"load and first answer in {mem['load_s']:.2f} s.",
        "",
    ]
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--unresponsive", type=float, default=0.1)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memory-peers", type=int, default=MEMORY_PEERS)
    parser.add_argument("--no-write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    args = parser.parse_args()
    results = {"sim": bench_sim(args.nodes, args.unresponsive, args.lookups, args.seed), "memory": bench_memory(args.memory_peers)}
    c = results["sim"]["crawl"]
    assert c["coverage_of_live"] == 1.0, f"the crawl missed live servers: {c}"
    assert results["sim"]["fresh"]["messages_ratio"] < 1, "one hop should cost fewer messages than the iterative lookup"
    assert results["sim"]["fresh"]["one_hop"]["recall"] >= results["sim"]["fresh"]["iterative"]["recall"] - 0.01
    if not args.no_write:
        write(results, "python scripts/bench_fullrt.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
