#!/usr/bin/env python3
"""The full routing table (issue 15) on the simulated network, and its memory.

1. Crawl: a node with an empty full table and 3 bootstrap peers crawls the network
   (``rtrefresh.crawler``, parallelism 32); requests, our CPU and virtual time until
   one full coverage (every peer of the table visited, nobody discovered waiting), and
   the share of live servers then in the table.
2. One-hop lookups: ``find_closest_peers(key, 20)`` over the crawled table (the router's
   one-hop mode) against the iterative lookup of the same node's k-bucket table (the
   reference, same keys): exact answers (the true 20 closest live servers), recall,
   messages per lookup. Again after churn (10 % of servers replaced) without a re-crawl.
3. Memory and restart: 100k peers written to a SQLite store, then a fresh process
   imports the node, loads the table and answers one ``local_closest_peers``: RSS before
   and after the load, load time.

4. ``--churn-hours H``: the crawler runs as the node runs it (``crawler.DEFAULT_RATE``,
   parallelism 32, 1 h interval) for H hours of simulated time while servers leave,
   come back and join every ``CHURN_STEP``; the lookups are measured again after each hour.
5. ``--reprovide-cids C``: C CIDs provided (one sweep pass, every key due) by our node
   with the full table (one-hop lookups, ``region_sizes`` from the table) and, the same
   CIDs on the same network, by another live server with its k-bucket table (the sweep
   alone): lookups, FIND_NODE, ADD_PROVIDER, CPU and wall; then every CID must be held
   by all 20 of its closest live servers, for each provider.

Checks its own results (the crawl covers every live server, one-hop costs fewer
messages than iterative and finds as much after churn, every CID reached its 20
closest) and appends the figures with the command to BENCHMARKS.md; ``--json`` keeps
the results, ``--write-from`` appends the section of a saved run.

    python scripts/bench_fullrt.py                       # 2,000 nodes, 10 % unresponsive
    python scripts/bench_fullrt.py --nodes 10000 --unresponsive 0.3 --no-write
    python scripts/bench_fullrt.py --nodes 10000 --unresponsive 0.3 --churn-hours 2 --reprovide-cids 100000 --no-memory
    python scripts/bench_fullrt.py --nodes 50000 --unresponsive 0.3 --lookups 50 --churn-hours 1 --no-memory  # ~6.5 GB RSS
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_reprovide import add_all, multihashes  # noqa: E402

from dhtstore.kadkey import Key  # noqa: E402
from dhtstore.provider.memory import MemoryClaimStore, MemoryProvideList  # noqa: E402
from dhtstore.provider.reprovider import Reprovider  # noqa: E402
from dhtstore.routing.router import KademliaRouter  # noqa: E402
from dhtstore.routingtable.fulltable import FullTable  # noqa: E402
from dhtstore.rtrefresh.crawler import DEFAULT_RATE, Crawler, prefix_preimages  # noqa: E402
from dhtstore.sim import SimConfig, SimNetwork, SimNode  # noqa: E402
from dhtstore.sim.provider import Oracle, holders  # noqa: E402
from dhtstore.types import MessageType  # noqa: E402

MEMORY_PEERS = 100_000

MEMORY_CHILD = r"""
import json, sys, time, anyio
sys.path.insert(0, sys.argv[1])
import dhtstore.node  # the whole node's code, as a running node has it
from dhtstore.data.engine import make_engine
from dhtstore.data.fastread import open_reader
from dhtstore.kadkey import Key
from dhtstore.routingtable.fulltable import FullTable

def rss_mb(field="VmRSS"):  # VmHWM: this image's peak (ru_maxrss would count the parent's, from before exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024

async def main():
    engine = make_engine(sys.argv[2])
    async with open_reader(engine) as reader:  # as the node loads it: its fast-read path
        base = rss_mb()
        base_peak = rss_mb("VmHWM")
        started, cpu = time.perf_counter(), time.process_time()
        table = FullTable(Key(1), engine)
        n = await table.load(reader=reader)
        table.local_closest_peers(Key(12345), 20)
        took, took_cpu = time.perf_counter() - started, time.process_time() - cpu
    await engine.dispose()
    loaded_rss, loaded_peak = rss_mb(), rss_mb("VmHWM")
    # The reference, same process, just after: the same rows read by plain sqlite3 (no table built).
    import sqlite3
    started, cpu = time.perf_counter(), time.process_time()
    with sqlite3.connect(sys.argv[3]) as conn:
        columns = "peer_id, addrs, failures, crawled_at, last_contact_at, first_seen_at"
        rows = conn.execute(f"SELECT {columns} FROM network_peers ORDER BY peer_id").fetchall()
    ref, ref_cpu = time.perf_counter() - started, time.process_time() - cpu
    assert len(rows) == n
    print(json.dumps({"peers": n, "rss_base_mb": base, "rss_loaded_mb": loaded_rss, "load_s": took, "load_cpu_s": took_cpu,
                      "sqlite3_read_s": ref, "sqlite3_read_cpu_s": ref_cpu,
                      "maxrss_before_mb": base_peak, "maxrss_mb": loaded_peak}))

anyio.run(main)
"""


def bench_sim(
    nodes: int, unresponsive: float, lookups: int, seed: int, churn_hours: float = 0.0, reprovide_cids: int = 0
) -> dict[str, Any]:
    t = time.process_time()
    net = SimNetwork(SimConfig(nodes=nodes, seed=seed, unresponsive=unresponsive))
    build_cpu = time.process_time() - t
    print(f"network of {nodes:,} nodes built in {build_cpu:.0f} s CPU, peak RSS {peak_rss_mb():.0f} MB", flush=True)
    gc.collect()
    gc.freeze()
    preimages = prefix_preimages()
    me = net.node(0)
    table = FullTable(me.key, wall_clock=net.wall_clock)
    for peer in [p for p in me.table.peers() if net.by_id[p.peer_id].responsive][:3]:  # bootstrap peers answer
        table.add(peer, 0.0)
    crawler = Crawler(table, me.messenger, parallelism=32, rate=1000, clock=net.now, wall_clock=net.wall_clock, preimages=preimages)

    async def crawl() -> int:
        """Until one full coverage: every peer of the table visited since the start and none
        discovered waiting (or nothing left at all). Not "until nothing is due": a crawl
        that takes longer than the interval (50k servers at parallelism 32) never gets there."""
        rounds, start = 0, int(net.wall_clock())  # crawled_at is whole seconds
        while rounds < 10_000 and await crawler.crawl_round():
            rounds += 1
            if table.crawled_since(start) == len(table) and not crawler.status()["discovered_waiting"]:
                break
        return rounds

    sent, cpu, t0 = net.message_count(), time.process_time(), net.now()
    net.run(crawl)
    crawl_cpu, crawl_virtual, crawl_requests = time.process_time() - cpu, net.now() - t0, net.message_count() - sent
    covered = coverage(net, me, table)
    print("crawl", json.dumps({"requests": crawl_requests, "cpu_s": crawl_cpu, "virtual_s": crawl_virtual, "coverage": covered}), flush=True)
    assert covered == 1.0, f"the crawl missed live servers: {covered:.2%} covered"

    one_hop = KademliaRouter(me.info, table, me.messenger, me.validator, clock=net.now, one_hop_min_peers=20)
    rng = random.Random(seed)
    fresh = measure(net, me, one_hop, rng, lookups, "fresh")
    net.churn(0.1)
    net.set_online(me, True)  # the node measured stays
    churned = measure(net, me, one_hop, rng, lookups, "after 10% churn, no re-crawl")
    results: dict[str, Any] = {
        "nodes": nodes, "unresponsive": unresponsive, "lookups": lookups, "build_cpu_s": build_cpu,
        "crawl": {
            "requests": crawl_requests, "requests_per_server": crawl_requests / (nodes - 1), "cpu_s": crawl_cpu,
            "virtual_s": crawl_virtual, "coverage_of_live": covered, "table": len(table),
        },
        "fresh": fresh, "churned": churned,
    }
    results["churn_hours"] = []
    for hour in range(1, math.ceil(churn_hours) + 1):  # measured at the end of each hour
        spent = churn_hour(net, me, crawler, table, min(1.0, churn_hours - hour + 1))
        spent["after"] = measure(net, me, one_hop, rng, lookups, f"after {hour} h of churn, crawler running")
        results["churn_hours"].append(spent)
    if reprovide_cids:
        results["reprovide"] = reprovide(net, me, one_hop, table, reprovide_cids)
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def coverage(net: SimNetwork, me: SimNode, table: FullTable) -> float:
    """The share of the live servers (other than ``me``) that the table holds."""
    live = {n.peer_id for n in net.live_nodes()} - {me.peer_id}
    return len(live & {p.peer_id for p in table.peers()}) / len(live)


def measure(net: SimNetwork, me: SimNode, one_hop: KademliaRouter, rng: random.Random, lookups: int, label: str) -> dict[str, Any]:
    """``lookups`` random keys, one-hop against iterative (the same keys): exact answers
    (the true 20 closest live servers), recall, messages and CPU per lookup."""
    keys = [rng.randbytes(32) for _ in range(lookups)]
    oracle = Oracle(net, exclude=me.peer_id)
    out: dict[str, Any] = {}
    for name, router in (("one_hop", one_hop), ("iterative", me.router)):
        exact = recall = 0.0
        cpu = time.process_time()

        async def run_all(router: KademliaRouter = router) -> list[list[Any]]:
            return [await router.find_closest_peers(k, 20) for k in keys]

        before = net.message_count()
        answers = net.run(run_all)
        messages = net.message_count() - before
        for key, got in zip(keys, answers, strict=True):
            truth = [n.peer_id for n in oracle.closest(Key.hash(key).value)]
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


CHURN_STEP = 300.0  # seconds of simulated time between churn events
CHURN_LEAVE = 0.02  # of the online servers leave at each step, as many offline ones come back
CHURN_JOIN = 0.005  # of the network joins new at each step (and looks itself up, as a starting node)


def churn_hour(net: SimNetwork, me: SimNode, crawler: Crawler, table: FullTable, hours: float) -> dict[str, Any]:
    """The crawler runs as the node runs it (its default rate, parallelism and interval)
    while, every CHURN_STEP, servers leave, come back and join; at the end the other
    servers' k-bucket tables are refreshed (go refreshes every 10 min), ours is not."""
    crawler.rate = DEFAULT_RATE
    steps = round(hours * 3600 / CHURN_STEP)
    counters_before = Counter(crawler.counters)
    left = returned = joined = 0
    cpu, wall, sent = time.process_time(), time.perf_counter(), net.message_count()

    async def hour() -> None:
        nonlocal left, returned, joined
        async with anyio.create_task_group() as tg:
            tg.start_soon(crawler.run)
            for step in range(steps):
                await anyio.sleep(CHURN_STEP)
                down, up = net.churn(CHURN_LEAVE)
                net.set_online(me, True)  # the node measured stays
                left, returned = left + len(down), returned + len(up)
                for _ in range(round(CHURN_JOIN * len(net.nodes))):
                    newcomer = net.add_node()
                    joined += 1
                    tg.start_soon(newcomer.router.find_closest_peers, newcomer.peer_id.to_bytes(), 20)
                print(f"churn step {step + 1}/{steps}: {left} left, {returned} back, {joined} joined; table {len(table):,}, "
                      f"crawl requests {crawler.counters['requests'] - counters_before['requests']:,}, "
                      f"{time.process_time() - cpu:.0f} s CPU", flush=True)
            tg.cancel_scope.cancel()

    net.run(hour)
    net.refresh()
    done = Counter(crawler.counters)
    done.subtract(counters_before)
    result = {
        "hours": hours, "left": left, "returned": returned, "joined": joined,
        "crawl_requests": done["requests"], "crawl_visits": done["visits"], "crawl_visits_failed": done["visits_failed"],
        "table_added": done["added"], "table_removed": done["removed"],
        "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "messages": net.message_count() - sent,
        "coverage_of_live": coverage(net, me, table), "table": len(table), "live": len(net.live_nodes()),
    }
    print("churn hour", json.dumps(result), flush=True)
    return result


def reprovide(net: SimNetwork, me: SimNode, one_hop: KademliaRouter, table: FullTable, cids: int) -> dict[str, Any]:
    """The same CIDs provided (every key due: one pass of the sweep) by ``me`` with the
    full table (one-hop lookups, region sizes from the table) and by another live server
    with its k-bucket table (the sweep alone); then each CID must be held by its 20
    closest live servers, for each provider."""
    other = next(n for n in net.live_nodes() if n is not me)
    out: dict[str, Any] = {"cids": cids}
    for name, node, dht, sizes in (("full_table", me, one_hop, table), ("sweep_alone", other, other.router, None)):

        async def provide(node: SimNode = node, dht: KademliaRouter = dht, sizes: FullTable | None = sizes) -> list[Any]:
            claims = MemoryClaimStore()
            store = MemoryProvideList(claims)
            await add_all(store, cids, int(net.wall_clock()))
            r = Reprovider(store, claims, dht, node.messenger, lambda: node.info, clock=net.wall_clock, region_sizes=sizes)
            return await r.run_due()

        before = Counter(net.messages)
        cpu, wall, t0 = time.process_time(), time.perf_counter(), net.now()
        reports = net.run(provide)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        sent = Counter(net.messages)
        sent.subtract(before)
        out[name] = {
            "visits": len(reports), "lookups": sum(x.lookups for x in reports),
            "find_node": sent[MessageType.FIND_NODE], "add_provider": sent[MessageType.ADD_PROVIDER],
            "messages": sum(sent.values()), "cpu_s": cpu, "wall_s": wall, "virtual_s": net.now() - t0,
            "errors": sum(1 for x in reports if x.error),
        }
        print("reprovide", name, json.dumps(out[name]), flush=True)
    for name, node in (("full_table", me), ("sweep_alone", other)):

        async def count(node: SimNode = node) -> list[int]:
            oracle = Oracle(net, exclude=node.peer_id)
            return [await holders(oracle, mh, node.peer_id) for mh in multihashes(cids)]

        held = net.run(count)
        out[name]["held_by_all_20"] = sum(h == 20 for h in held) / cids
        out[name]["mean_holders"] = sum(held) / cids
        print("reprovide check", name, json.dumps({k: out[name][k] for k in ("held_by_all_20", "mean_holders")}), flush=True)
    return out


def bench_memory(peers: int, runs: int = 1) -> list[dict[str, Any]]:
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
        results = []
        for _ in range(runs):
            command = [sys.executable, "-c", MEMORY_CHILD, str(ROOT), url, str(Path(tmp) / "dhtstore.db")]
            child = subprocess.run(command, capture_output=True, text=True, check=True)
            result: dict[str, Any] = json.loads(child.stdout)
            result["table_mb"] = result["rss_loaded_mb"] - result["rss_base_mb"]
            result["bytes_per_peer"] = result["table_mb"] * 2**20 / result["peers"]
            print("memory", json.dumps(result), flush=True)
            results.append(result)
    return results


def memory_line(mem: dict[str, Any]) -> str:
    return (
        f"Memory: {mem['peers']:,} peers loaded from SQLite by a process that imported the node: RSS "
        f"{mem['rss_base_mb']:.0f} -> {mem['rss_loaded_mb']:.0f} MB ({mem['bytes_per_peer']:.0f} bytes per peer, "
        f"{mem['rss_loaded_mb'] / mem['rss_base_mb']:.2f}x the process without the table); peak RSS "
        f"{mem['maxrss_mb']:.0f} MB against {mem['maxrss_before_mb']:.0f} MB before the load (the imports' own peak); "
        f"load and first answer in {mem['load_s']:.2f} s ({mem['load_cpu_s']:.2f} s of CPU; "
        f"{mem['load_cpu_s'] / mem['sqlite3_read_cpu_s']:.1f}x the CPU of reading the same rows with plain sqlite3, "
        f"{mem['sqlite3_read_cpu_s']:.2f} s, just after in the same process)."
    )


def write_memory(runs: list[dict[str, Any]], command: str) -> None:
    """The memory-and-restart runs alone (``--memory-only``): each run a fresh process."""
    title = f"### {time.strftime('%Y-%m-%d')}, restart: {runs[0]['peers']:,} peers, {len(runs)} runs"
    lines = ["", title, "", f"`{command}`", ""]
    lines += [f"- run {i}: {memory_line(m)}" for i, m in enumerate(runs, 1)]
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write("\n".join([*lines, ""]))


def write(results: dict[str, Any], command: str) -> None:
    with open(ROOT / "BENCHMARKS.md", "a") as f:
        f.write("\n".join(section(results, command)))


def section(results: dict[str, Any], command: str) -> list[str]:
    sim, mem = results["sim"], results["memory"]
    c = sim["crawl"]
    lines = [
        "",
        f"### {time.strftime('%Y-%m-%d')}, {sim['nodes']:,} nodes, {sim['unresponsive']:.0%} unresponsive, {sim['lookups']} lookups",
        "",
        f"`{command}`",
        "",
        f"Network built in {sim['build_cpu_s']:.0f} s of CPU; peak RSS of the run {sim['peak_rss_mb']:,.0f} MB.",
        (
            f"Crawl from 3 bootstrap peers to one full coverage: {c['requests']:,} requests "
            f"({c['requests_per_server']:.1f} per server; 16 per answering one), {c['cpu_s']:.1f} s of our CPU, "
            f"{c['virtual_s']:.0f} s of simulated time; the table then holds {c['coverage_of_live']:.1%} of the live servers."
        ),
        "",
        "| lookups | exact (true 20 closest) | recall | messages / lookup | ratio to iterative |",
        "|---|---|---|---|---|",
    ]
    measured = [("fresh table", sim["fresh"]), ("after 10 % churn, no re-crawl", sim["churned"])]
    measured += [(f"after {i} h of churn, crawler running", h["after"]) for i, h in enumerate(sim.get("churn_hours", []), 1)]
    for label, m in measured:
        for name in ("one_hop", "iterative"):
            r = m[name]
            ratio = f"{m['messages_ratio']:.2f}" if name == "one_hop" else "1 (reference)"
            lines.append(f"| {label}: {name.replace('_', '-')} | {r['exact']:.1%} | {r['recall']:.3f} | {r['messages_per_lookup']:.1f} | {ratio} |")
    lines.append("")
    for i, h in enumerate(sim.get("churn_hours", []), 1):
        lines.append(
            f"- churn hour {i} ({h['hours']:g} h; every {CHURN_STEP / 60:.0f} min {CHURN_LEAVE:.0%} of the online servers leave, as many "
            f"come back, {CHURN_JOIN:.1%} new ones join): {h['left']:,} left, {h['returned']:,} came back, {h['joined']:,} joined. "
            f"The crawler (rate {DEFAULT_RATE:.0f} visits/s, parallelism 32, interval 1 h): {h['crawl_visits']:,} visits "
            f"({h['crawl_visits_failed']:,} failed), {h['crawl_requests']:,} requests, {h['table_added']:,} peers added and "
            f"{h['table_removed']:,} removed; {h['cpu_s']:.0f} s of CPU for the hour (the whole simulation). At the end the table "
            f"holds {h['coverage_of_live']:.1%} of the {h['live']:,} live servers ({h['table']:,} rows); then the other servers' "
            "k-bucket tables are refreshed (`SimNetwork.refresh`: dead peers out, live ones in, as an ideal refresh) before the lookups."
        )
    rp = sim.get("reprovide")
    if rp:
        n = rp["cids"]
        ft, sw = rp["full_table"], rp["sweep_alone"]
        lines += [
            "",
            (
                f"Provide {n:,} CIDs (all due at once: one pass of the sweep over every region), the same CIDs on the same network "
                "just after: our node with the full table (one-hop lookups, region sizes from the table) against another live server "
                "with its k-bucket table (the sweep alone). CPU and wall include the simulated network's side."
            ),
            "",
            "| per pass | full table | sweep alone | full / alone |",
            "|---|---|---|---|",
        ]
        for label, key, per in (
            ("lookups", "lookups", False), ("FIND_NODE", "find_node", False), ("ADD_PROVIDER", "add_provider", False),
            ("messages per CID", "messages", True), ("CPU ms per CID", "cpu_s", True), ("wall ms per CID", "wall_s", True),
        ):
            scale = (1000 / n if key.endswith("_s") else 1 / n) if per else 1
            fmt = "{:,.2f}" if per else "{:,.0f}"
            lines.append(f"| {label} | {fmt.format(ft[key] * scale)} | {fmt.format(sw[key] * scale)} | {ft[key] / sw[key]:.2f} |")
        lines.append(
            f"| CIDs held by all 20 of their closest live servers (checked) | {ft['held_by_all_20']:.2%} | {sw['held_by_all_20']:.2%} | |"
        )
        lines.append("")
    if mem:
        lines += [memory_line(mem), ""]
    return lines


def check(sim: dict[str, Any]) -> None:
    """Fail loudly (nothing written) on a result the design rules out."""
    c = sim["crawl"]
    assert c["coverage_of_live"] == 1.0, f"the crawl missed live servers: {c}"
    assert sim["fresh"]["messages_ratio"] < 1, "one hop should cost fewer messages than the iterative lookup"
    assert sim["fresh"]["one_hop"]["recall"] >= sim["fresh"]["iterative"]["recall"] - 0.01
    for i, h in enumerate(sim.get("churn_hours", []), 1):
        assert h["crawl_visits"] > 0, f"the crawler visited nobody in churn hour {i}"
        assert h["after"]["one_hop"]["recall"] >= h["after"]["iterative"]["recall"] - 0.01, f"one hop lost to iterative after hour {i}"
    rp = sim.get("reprovide")
    if rp:
        for name in ("full_table", "sweep_alone"):
            r = rp[name]
            assert r["held_by_all_20"] == 1.0, f"{name}: {1 - r['held_by_all_20']:.2%} of the CIDs miss some of their 20 closest: {r}"
            assert r["add_provider"] >= 20 * rp["cids"], f"{name}: fewer ADD_PROVIDER than 20 per CID: {r}"

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--unresponsive", type=float, default=0.1)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--memory-peers", type=int, default=MEMORY_PEERS)
    parser.add_argument("--churn-hours", type=float, default=0.0, help="then this long of churn with the crawler running")
    parser.add_argument("--reprovide-cids", type=int, default=0, help="then provide this many CIDs, full table against the sweep alone")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory-and-restart part")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-write", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    parser.add_argument("--memory-only", type=int, metavar="RUNS", help="Only the restart: RUNS fresh processes load the table.")
    parser.add_argument("--write-from", type=Path, metavar="JSON", help="append the section of a run saved with --json; no run")
    parser.add_argument("--command", help="with --write-from: the command that run was")
    args = parser.parse_args()
    if args.write_from:
        saved = json.loads(args.write_from.read_text())
        check(saved["sim"])
        lines = section(saved, args.command or "python scripts/bench_fullrt.py")
        print("\n".join(lines))
        if not args.no_write:
            write(saved, args.command or "python scripts/bench_fullrt.py")
        return
    if args.memory_only:
        runs = bench_memory(args.memory_peers, args.memory_only)
        assert all(r["peers"] == args.memory_peers for r in runs), "the load lost peers"
        if not args.no_write:
            write_memory(runs, "python scripts/bench_fullrt.py " + " ".join(sys.argv[1:]))
        return
    sim = bench_sim(args.nodes, args.unresponsive, args.lookups, args.seed, args.churn_hours, args.reprovide_cids)
    results = {"sim": sim, "memory": None if args.no_memory else bench_memory(args.memory_peers)[0]}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    check(results["sim"])
    if not args.no_write:
        write(results, "python scripts/bench_fullrt.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
