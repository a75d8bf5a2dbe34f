#!/usr/bin/env python
"""The first provide of one PostgreSQL provide list shared by several heads, provider-only (issue 17).

``bench_reprovide_sqlite.py --store-url`` measures one head against the exact oracle of
``bench_reprovide --provider-only`` (lookups answered at almost no CPU, ADD_PROVIDER
counted and dropped). This runs ``--heads`` such processes at once on one store that
holds ``--cids`` CIDs (imported apart with ``dhtstore provide add --from-file``, the
CIDs of ``bench_reprovide.multihashes``). Each head is a ``Reprovider`` with an identity
of its own on the real clock, so the heads share the list through the store's claims
(``provider.claims``) as ``dhtstore run`` processes do. Every key is made due first
(``--reset``: never provided, due now, no regions or schedule), unless it is already.

Reported: each head's ADD_PROVIDER, keys, visits, lookups, CPU and peak RSS; the wall
time; the PostgreSQL server's CPU and WAL (a local server: run nothing else on it).
Checks, and fails loudly when off: 20 ADD_PROVIDER per CID in all (no key went out
twice) and every key of the list provided.

    python scripts/bench_shared_provider_only.py --store-url postgresql+asyncpg://postgres@127.0.0.1:5432/b2m --cids 2000000 --heads 3 --reset
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reprovide import CountingMessenger, OracleDHT, cycle_check, publish  # noqa: E402
from bench_reprovide_sqlite import Meter, provided_since  # noqa: E402
from sqlalchemy import text  # noqa: E402

from dhtstore.data.schema import open_store  # noqa: E402
from dhtstore.peerid import PeerId  # noqa: E402
from dhtstore.provider.claims import SqlClaimStore  # noqa: E402
from dhtstore.provider.providelist import ProvideListStore  # noqa: E402
from dhtstore.provider.reprovider import Reprovider  # noqa: E402
from dhtstore.types import PeerInfo  # noqa: E402

IDLE_POLLS = 30  # a head stops after this many one-second polls in a row find nothing due it may take


async def head(store_url: str, index: int, nodes: int, seed: int) -> dict[str, Any]:
    """One head's first provide: visit due slices until none is left to any head."""
    engine = await open_store(store_url)
    try:
        store = ProvideListStore(engine)
        dht, messenger = OracleDHT(nodes, seed), CountingMessenger()
        me = PeerInfo(PeerId(b"\x00\x24\x08\x01\x12\x20" + index.to_bytes(32, "big")), (b"\x04\x7f\x00\x00\x01",))
        r = Reprovider(store, SqlClaimStore(engine), dht, messenger, lambda: me)
        cpu, visits, idle = time.process_time(), 0, 0
        while idle < IDLE_POLLS:
            done = await r.run_due()
            visits += len(done)
            due = await store.next_due()
            if due is None or due > time.time():
                break  # nothing due to anyone: the list is through
            idle = 0 if done else idle + 1  # the rest is under other heads' claims: wait for them
            await anyio.sleep(1)
        assert r.sweep is not None
        return {
            "head": index,
            "sent": messenger.sent,
            "keys": r.sweep.counters.keys_provided,
            "visits": visits,
            "lookups": dht.lookups,
            "cpu": time.process_time() - cpu,
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        await engine.dispose()


async def reset(store_url: str) -> None:
    """Every key due now and never provided; no regions, claims or schedule yet."""
    engine = await open_store(store_url)
    try:
        async with engine.begin() as conn:
            now = int(time.time())
            await conn.execute(
                text(
                    "UPDATE provided_keys SET last_provided_at = NULL, next_due_at = :now, attempts = 0, last_error = NULL"
                ),
                {"now": now},
            )
            for table in ("reprovide_regions", "reprovide_claims", "provider_state"):
                await conn.execute(text(f"DELETE FROM {table}"))
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE provided_keys"))
    finally:
        await engine.dispose()


async def measured(store_url: str, heads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start the heads (children) and measure the run around them."""
    engine = await open_store(store_url)
    try:
        meter = Meter(engine)
        await meter.start()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        base = [sys.executable, __file__, "--store-url", store_url, "--nodes", str(args.nodes), "--seed", str(args.seed)]
        children = [
            subprocess.Popen([*base, "--child", str(i)], stdout=subprocess.PIPE, text=True, env=env) for i in range(heads)
        ]
        outputs = [await anyio.to_thread.run_sync(c.communicate) for c in children]
        if any(c.returncode for c in children):
            sys.exit(f"FAILED: a head exited with {[c.returncode for c in children]}")
        run = await meter.stop()
        run["provided"] = await provided_since(engine, -1)  # every key ever provided (never: NULL)
    finally:
        await engine.dispose()
    run["heads"] = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    return run


def report(args: argparse.Namespace, run: dict[str, Any]) -> None:
    n, heads = args.cids, run["heads"]
    sent = sum(h["sent"] for h in heads)
    check = cycle_check(sent, run["provided"], n, "the first provide, all heads together")
    lines = [
        f"### {len(heads)} heads on one PostgreSQL store, first provide of {n:,} CIDs, {args.nodes:,} oracle servers",
        "",
        f"`python scripts/bench_shared_provider_only.py --cids {n} --heads {len(heads)} --nodes {args.nodes} --store-url URL"
        f"{' --reset' if args.reset else ''}` — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| head | keys provided | share | ADD_PROVIDER | visits | lookups | CPU s | CPU µs per key | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {h['head']} | {h['keys']:,} | {h['keys'] / n:.1%} | {h['sent']:,} | {h['visits']:,} | {h['lookups']:,} | "
            f"{h['cpu']:,.1f} | {h['cpu'] / max(h['keys'], 1) * 1e6:,.0f} | {h['rss']:.0f} MB |"
            for h in heads
        ],
        "",
        f"- wall {run['wall']:,.0f} s ({n / run['wall']:,.0f} CIDs/s, {sent / run['wall']:,.0f} ADD_PROVIDER/s); "
        f"heads' CPU {sum(h['cpu'] for h in heads):,.0f} s in all ({sum(h['cpu'] for h in heads) / n * 1e6:,.0f} µs per CID).",
    ]
    if "server_cpu" in run:
        lines.append(
            f"- PostgreSQL server: {run['server_cpu']:,.0f} CPU-s ({run['server_cpu'] / n * 1e6:,.0f} µs per CID), "
            f"{run['wal'] / 2**20:,.0f} MB of WAL ({run['wal'] / n:,.0f} bytes per CID)."
        )
    lines += [f"- {check.line}", ""]
    publish("\n".join(lines), check, args.append)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store-url", required=True, help="a PostgreSQL store holding the --cids CIDs")
    ap.add_argument("--cids", type=int, help="how many CIDs the store holds (checked)")
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=10_000, help="servers of the oracle network")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reset", action="store_true", help="make every key due and never provided first")
    ap.add_argument("--append", type=Path, help="append the results section to this file (BENCHMARKS.md)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(anyio.run(head, args.store_url, args.child, args.nodes, args.seed)), flush=True)
        return
    if args.cids is None:
        ap.error("--cids is required")
    if args.reset:
        anyio.run(reset, args.store_url)
    run = anyio.run(measured, args.store_url, args.heads, args)
    report(args, run)


if __name__ == "__main__":
    main()
