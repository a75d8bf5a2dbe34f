#!/usr/bin/env python3
"""Lookup benchmark on the simulated network.

For each network size: random keys looked up from random live nodes with
``find_closest_peers(key, 20)``; reports how often the answer is exactly the true 20
closest live peers (brute force) and the mean share of them it holds (recall), hops
(median, p95), messages per lookup, CPU time per lookup and virtual duration. Then the
routing table's ``local_closest_peers`` speed.

    python scripts/bench_lookup.py                 # 1k and 10k nodes
    python scripts/bench_lookup.py --with-20k      # and 20k
    python scripts/bench_lookup.py --nodes 10000 --unresponsive 0.3 [--refresh] [--loss 0.01]
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtstore.kadkey import Key  # noqa: E402
from dhtstore.peerid import PeerId  # noqa: E402
from dhtstore.routing.api import LookupStats  # noqa: E402
from dhtstore.routingtable.kbuckets import KBucketTable  # noqa: E402
from dhtstore.sim import SimConfig, SimNetwork, run_virtual  # noqa: E402
from dhtstore.types import PeerInfo  # noqa: E402


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_network(nodes: int, lookups: int, seed: int, unresponsive: float, loss: float, refresh: bool) -> dict[str, Any]:
    started = time.process_time()
    net = SimNetwork(SimConfig(nodes=nodes, seed=seed, unresponsive=unresponsive, loss=loss))
    if refresh:
        net.refresh()
    build_cpu = time.process_time() - started
    # The network's millions of long-lived objects would make every full garbage
    # collection scan them all; park them outside the collector, as a long-running node would.
    gc.collect()
    gc.freeze()
    rng = random.Random(seed)
    live = net.live_nodes()
    jobs = [(rng.choice(live), rng.randbytes(32)) for _ in range(lookups)]

    async def run() -> list[tuple[list[PeerId], LookupStats]]:
        results = []
        for node, key in jobs:
            peers = await node.router.find_closest_peers(key, 20)
            results.append(([p.peer_id for p in peers], node.lookups[-1]))
        return results

    started = time.process_time()
    results = run_virtual(run)
    lookup_cpu = time.process_time() - started
    gc.unfreeze()
    stats = [s for _, s in results]
    truths = [net.true_closest(Key.hash(key), 20, exclude=node.peer_id) for node, key in jobs]
    exact = sum(got == truth for (got, _), truth in zip(results, truths))
    recall = statistics.mean(len(set(got) & set(truth)) / len(truth) for (got, _), truth in zip(results, truths))
    hops = [s.hops for s in stats]
    messages = [s.messages_sent for s in stats]
    return {
        "nodes": nodes,
        "lookups": lookups,
        "unresponsive": unresponsive,
        "loss": loss,
        "table_mean": statistics.mean(len(n.table) for n in net.nodes),
        "build_cpu_s": build_cpu,
        "accuracy": exact / lookups,
        "recall": recall,
        "hops_median": statistics.median(hops),
        "hops_p95": percentile(hops, 0.95),
        "messages_median": statistics.median(messages),
        "messages_mean": statistics.mean(messages),
        "messages_p95": percentile(messages, 0.95),
        "cpu_ms_per_lookup": 1000 * lookup_cpu / lookups,
        "virtual_s_median": statistics.median(s.duration for s in stats),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_table(offered: int, samples: int, seed: int, bucket_size: int) -> dict[str, Any]:
    rng = random.Random(seed)
    prefix = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
    table = KBucketTable(Key.hash(b"bench"), bucket_size=bucket_size)
    for _ in range(offered):
        table.add(PeerInfo(PeerId(prefix + rng.randbytes(32))), 0.0)
    targets = [Key.hash(rng.randbytes(8)) for _ in range(samples)]
    times = []
    for target in targets:
        t0 = time.perf_counter_ns()
        table.local_closest_peers(target, 20)
        times.append(time.perf_counter_ns() - t0)
    return {"offered": offered, "held": len(table), "k": bucket_size,
            "median_us": statistics.median(times) / 1000, "p95_us": percentile(times, 0.95) / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, action="append", help="network size (repeatable); default 1000 and 10000")
    parser.add_argument("--with-20k", action="store_true", help="also 20,000 nodes")
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--unresponsive", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--refresh", action="store_true", help="evict dead peers from every table before the lookups")
    args = parser.parse_args()
    sizes = args.nodes or [1000, 10000]
    if args.with_20k:
        sizes.append(20000)

    print("| nodes | unresp. | loss | exact top-20 | recall | hops p50 | hops p95 | msgs p50 | msgs mean | msgs p95 "
          "| CPU ms/lookup | virtual s p50 | build CPU s | table size | max RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        r = bench_network(n, args.lookups, args.seed, args.unresponsive, args.loss, args.refresh)
        print(f"| {r['nodes']:,} | {r['unresponsive']:.0%} | {r['loss']:.0%} | {r['accuracy']:.1%} | {r['recall']:.1%} "
              f"| {r['hops_median']:g} "
              f"| {r['hops_p95']:g} | {r['messages_median']:g} | {r['messages_mean']:.1f} | {r['messages_p95']:g} "
              f"| {r['cpu_ms_per_lookup']:.1f} | {r['virtual_s_median']:.2f} | {r['build_cpu_s']:.1f} "
              f"| {r['table_mean']:.0f} | {r['max_rss_mb']:.0f} |", flush=True)
    print()
    for bucket_size in (20, 5000):  # the Amino table, and one wide enough to hold all 5,000
        t = bench_table(5000, 20000, args.seed, bucket_size)
        print(f"local_closest_peers(n=20): {t['offered']:,} peers offered, {t['held']:,} held (k={t['k']}): "
              f"median {t['median_us']:.1f} µs, p95 {t['p95_us']:.1f} µs")


if __name__ == "__main__":
    main()
