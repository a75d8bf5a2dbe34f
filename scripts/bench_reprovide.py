#!/usr/bin/env python
"""Reprovide cost, sweep against naive, in the simulation (issue 6's benchmark).

One node of a simulated network (real routing code, virtual time) provides C CIDs
from a SQLite store. Measured for one reprovide cycle (22 h of virtual time, after the
first provide has laid out the regions):

- sweep: the ``Reprovider`` as the node runs it;
- naive: one lookup per CID, then ADD_PROVIDER to its 20 closest (the legacy
  provider). Its cost is linear in C by construction, so it is measured on a sample
  of CIDs and scaled up (the sample size is printed).

Lookups are the provider's ``find_closest_peers`` calls; messages are every Kademlia
message the network carried (lookup requests and ADD_PROVIDER). CPU is the process's
CPU time for the cycle (simulated peers included); peak RSS is the process's.

    python scripts/bench_reprovide.py                       # 10,000 nodes, 100,000 CIDs
    python scripts/bench_reprovide.py --cids 1000000        # 1M CIDs
    python scripts/bench_reprovide.py --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dhtstore.data.schema import create_or_upgrade, open_store  # noqa: E402
from dhtstore.multihash import cid_string  # noqa: E402
from dhtstore.network.api import Message, MessageType, NetworkError  # noqa: E402
from dhtstore.provider.providelist import ProvideListStore  # noqa: E402
from dhtstore.provider.reprovider import Reprovider  # noqa: E402
from dhtstore.provider.simulation import TimedStore, run_in, run_schedule  # noqa: E402
from dhtstore.sim import SimConfig, SimNetwork  # noqa: E402

HOUR = 3600.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def multihashes(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield b"\x12\x20" + hashlib.sha256(b"bench%d" % i).digest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--cids", type=int, default=100_000)
    ap.add_argument("--naive-sample", type=int, default=500, help="CIDs the naive provider is measured on")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--append", type=Path, help="append the results section to this file (BENCHMARKS.md)")
    args = ap.parse_args()

    t = time.process_time()
    net = SimNetwork(SimConfig(nodes=args.nodes, seed=args.seed))
    build_cpu = time.process_time() - t
    rss_after_build = peak_rss_mb()
    node = net.node(0)
    print(f"network of {args.nodes} nodes built in {build_cpu:.1f} s CPU, RSS {rss_after_build:.0f} MB", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        anyio.run(create_or_upgrade, url)
        results = run_in(net, sweep_cycle, net, node, url, args.cids)
    sweep_peak = peak_rss_mb()
    naive = run_in(net, naive_sample, net, node, args.naive_sample)
    scale = args.cids / args.naive_sample
    naive_lookups = args.cids
    naive_messages = naive["messages"] * scale
    naive_cpu = naive["cpu"] * scale

    rows = [
        ("lookups", f"{naive_lookups:,}", f"{results['lookups']:,}", f"{results['lookups'] / naive_lookups:.2%}"),
        ("messages", f"{naive_messages:,.0f}", f"{results['messages']:,}", f"{results['messages'] / naive_messages:.1%}"),
        ("CPU time (s)", f"{naive_cpu:,.0f}", f"{results['cpu']:,.1f}", f"{results['cpu'] / naive_cpu:.1%}"),
    ]
    load = os.getloadavg()
    command = "python scripts/bench_reprovide.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("nodes", args.nodes), ("cids", args.cids), ("naive_sample", args.naive_sample))
    )
    lines = [
        f"### Reprovide: sweep vs naive, {args.nodes:,} nodes, {args.cids:,} CIDs (one 22 h cycle)",
        "",
        f"`{command}` — {time.strftime('%Y-%m-%d')}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average {load[0]:.1f} while it ran (other jobs shared the machine).",
        "",
        "| per cycle | naive (one lookup per CID) | sweep | sweep / naive |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        f"- sweep: {results['visits']} region visits over {results['regions']} regions; first provide of all CIDs "
        f"{results['first_lookups']:,} lookups, {results['first_cpu']:.0f} s CPU; "
        f"every CID reprovided {results['per_key']} times in the cycle.",
        f"- naive figures: measured on {args.naive_sample} CIDs "
        f"({naive['messages'] / args.naive_sample:.1f} messages and {naive['cpu'] / args.naive_sample * 1000:.1f} ms CPU "
        f"per CID) and scaled to {args.cids:,}.",
        f"- CPU includes the simulated network's side (handlers, routing tables) and the SQLite store; "
        f"peak RSS {sweep_peak:.0f} MB, of which {rss_after_build:.0f} MB is the simulated network "
        f"(so about {sweep_peak - rss_after_build:.0f} MB for the provider, its store driver and the records the peers hold).",
        "- Targets (issue 6): sweep ≤ 3% of naive lookups and ≤ 35% of its messages; "
        "1M CIDs through a cycle in ≤ 15 CPU-minutes with peak RSS ≤ 500 MB.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with args.append.open("a") as out:
            out.write("\n" + text)


async def sweep_cycle(net: SimNetwork, node, url: str, n: int) -> dict:  # type: ignore[no-untyped-def]
    engine = await open_store(url)
    try:
        store = ProvideListStore(engine)
        batch: list[tuple[str, bytes]] = []
        for mh in multihashes(n):
            batch.append((cid_string(mh), mh))
            if len(batch) == 10_000:
                await store.add(batch, int(net.wall_clock()))
                batch = []
        if batch:
            await store.add(batch, int(net.wall_clock()))
        r = Reprovider(TimedStore(store), node.router, node.messenger, lambda: node.info, clock=net.wall_clock)  # type: ignore[arg-type]
        t = time.process_time()
        first = await r.run_due()
        first_cpu = time.process_time() - t
        print(f"first provide: {len(first)} visits, {sum(x.lookups for x in first)} lookups, {first_cpu:.0f} s CPU", flush=True)
        sent_before = sum(x.keys for x in first)
        messages_before = net.message_count()
        t = time.process_time()
        start = net.wall_clock()
        reports = await run_schedule(r, start + r.interval)
        cpu = time.process_time() - t
        keys_sent = sum(x.keys for x in reports)
        return {
            "lookups": sum(x.lookups for x in reports),
            "messages": net.message_count() - messages_before,
            "cpu": cpu,
            "visits": len(reports),
            "regions": len(await store.regions()),
            "first_lookups": sum(x.lookups for x in first),
            "first_cpu": first_cpu,
            "per_key": f"{keys_sent / n:.2f}" if sent_before else "0",
        }
    finally:
        await engine.dispose()


async def naive_sample(net: SimNetwork, node, sample: int) -> dict:  # type: ignore[no-untyped-def]
    """The legacy provider: a lookup per CID, then ADD_PROVIDER to the 20 found."""
    rng = random.Random(7)
    messages_before = net.message_count()
    t = time.process_time()
    for i in range(sample):
        mh = b"\x12\x20" + hashlib.sha256(b"naive%d" % rng.getrandbits(64)).digest()
        peers = await node.router.find_closest_peers(mh, 20)
        message = Message(MessageType.ADD_PROVIDER, key=mh, provider_peers=(node.info,))
        async with anyio.create_task_group() as tg:
            for p in peers:
                tg.start_soon(_send_quietly, node.messenger, p, message)
    return {"messages": net.message_count() - messages_before, "cpu": time.process_time() - t}


async def _send_quietly(messenger, peer, message) -> None:  # type: ignore[no-untyped-def]
    try:
        await messenger.send(peer, message)
    except NetworkError:
        pass


if __name__ == "__main__":
    main()
