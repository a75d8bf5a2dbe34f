#!/usr/bin/env python3
"""Benchmark the first provide of a shared provide list, spread over 1, 2, 3 ... processes.

Several ``dhtstore run --identity NAME`` processes ("heads") on one PostgreSQL store
share its provide list by claiming slices of the keyspace (``dhtstore/provider/claims.py``,
``dhtstore/provider/sweep.py``). For each head count this script, on a fresh scratch
PostgreSQL database and a fresh network of ``--js`` js-libp2p DHT servers on 127.0.0.1:

1. starts the heads (``dhtstore run --mode server``, or ``client`` with ``--head-mode``;
   all bootstrapping from js server 0) and waits until each has peers in its routing
   table (metric ``dhtstore_routing_table_peers``; at most ``--bootstrap-wait`` seconds);
2. adds ``--cids`` CIDs with ``dhtstore provide add --from-file`` and measures the wall
   time from just before that command until every CID of the list is marked provided
   in the store (``provided_keys.last_provided_at`` set);
3. reads each head's share (its ``dhtstore_provide_keys_provided_total``; their sum
   minus the CIDs is how many went out twice, "extra"), and the CPU
   seconds used over step 2 by each head, by the js servers and by the scratch database's
   PostgreSQL backends (utime + stime from ``/proc/<pid>/stat``; backends that closed
   during the run are missed, so that figure is a lower bound), and how busy the whole
   machine was (``/proc/stat``).

Every head is a DHT server too, so with h heads each CID goes to the 4 js servers plus
the h - 1 other heads (fewer than 20 servers: the whole keyspace is one region): 3 heads
send 6 ADD_PROVIDER messages per CID where 1 head sends 4, and the heads also store the
records they receive from each other in the shared store. With ``--head-mode client`` the
heads serve nothing, so every head count sends the same 4 messages per CID, all to js.

    python scripts/bench_shared_reprovide.py                         # --cids 20000 --js 4 --heads 1,3
    python scripts/bench_shared_reprovide.py --cids 20000 --heads 1,2,3
    python scripts/bench_shared_reprovide.py --cids 20000 --head-mode client
    DHTSTORE_BENCH_PG_URL=postgresql+asyncpg://postgres@127.0.0.1/test python scripts/bench_shared_reprovide.py

It imports the js harness (``tests/interop/jspeer.py``) and helpers of the interop tests
(``test_scaling_out``, ``test_shared_reprovide``) by putting ``tests/interop`` on
``sys.path``; the js packages must be installed (``npm ci`` in ``tests/interop/js``, done
here if missing). Figures are printed, not asserted. Heads' logs go to a temporary
directory, printed at the start.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from jspeer import JsPeer, ensure_node_modules, start_js_peers  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from test_scaling_out import free_port, wait_listening  # noqa: E402
from test_shared_reprovide import Head, add_cids, cids, cli, wait_provided  # noqa: E402

from dhtstore.config import read_identity  # noqa: E402
from dhtstore.data.engine import make_engine  # noqa: E402
from dhtstore.data.schema import create_or_upgrade  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a live process has used; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK, sum(v[:8]) / CLK_TCK


def routing_table_peers(head: Head) -> float:
    """The head's routing-table size; 0 while its metrics endpoint is not up yet."""
    try:
        text = urllib.request.urlopen(f"http://{head.metrics}/metrics", timeout=10).read().decode()
    except OSError:  # URLError included
        return 0.0
    m = re.search(r"^dhtstore_routing_table_peers(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def admin(url: str, statement: str, *params: object) -> list:
    u = make_url(url)
    conn = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432, database=u.database)
    try:
        if params:
            return await conn.fetch(statement, *params)
        await conn.execute(statement)
        return []
    finally:
        await conn.close()


async def backend_pids(base: str, database: str) -> list[int]:
    rows = await admin(base, "SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return [r["pid"] for r in rows]


@dataclass
class Result:
    heads: int
    wall: float
    add: float  # seconds the `provide add` command took (within wall)
    shares: list[float]
    head_cpu: list[float]
    js_cpu: float | None
    pg_cpu: float | None
    busy_cores: float
    load: tuple[float, float] = field(default=(0.0, 0.0))  # 1-min load average before, after


async def start_head(data: Path, name: str, bootstrap: str, logs: Path, mode: str) -> Head:
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    argv = [
        sys.executable, "-m", "dhtstore", "run", "--data-dir", str(data), "--identity", name, "--mode", mode,
        "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--bootstrap", bootstrap, "--metrics", metrics,
        "--status-interval", "10",
    ]  # fmt: skip
    log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()  # the child has its own descriptor
    head = Head(name, proc, read_identity(data / "identities" / f"{name}.key").peer_id(), port, metrics)
    await wait_listening(port, proc)
    return head


async def one_run(node_bin: str, base: str, n_heads: int, n_js: int, n_cids: int, args: argparse.Namespace, work: Path) -> Result:
    name = f"dhtstore_bench_{secrets.token_hex(4)}"
    await admin(base, f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    data = work / f"heads{n_heads}" / "dht"
    logs = work / f"heads{n_heads}"
    logs.mkdir(parents=True)
    heads: list[Head] = []
    engine = None
    try:
        await create_or_upgrade(url)
        names = [f"head-{i + 1}" for i in range(n_heads)]
        await cli("init", "--data-dir", str(data), "--store", url, "--identity", names[0])
        for n in names[1:]:
            await cli("init", "--data-dir", str(data), "--identity", n)
        engine = make_engine(url)
        async with AsyncExitStack() as stack:
            js: list[JsPeer] = await stack.enter_async_context(start_js_peers(node_bin, n_js))
            for peer in js[1:]:
                await peer.dial(js[0].addr)
            try:
                for n in names:
                    heads.append(await start_head(data, n, js[0].addr, logs, args.head_mode))
                with anyio.move_on_after(args.bootstrap_wait):
                    while not all([await anyio.to_thread.run_sync(routing_table_peers, h) > 0 for h in heads]):
                        await anyio.sleep(0.25)
                await anyio.sleep(1)  # the reprovider starts just after the first bootstrap
                tables = [await anyio.to_thread.run_sync(routing_table_peers, h) for h in heads]
                js_pids = [p._process.pid for p in js]  # jspeer keeps the process private
                pg_pids = await backend_pids(base, name)

                load0 = os.getloadavg()[0]
                head_cpu0 = [proc_cpu(h.proc.pid) or 0.0 for h in heads]
                js_cpu0 = [proc_cpu(p) for p in js_pids]
                pg_cpu0 = {p: proc_cpu(p) or 0.0 for p in pg_pids}
                busy0, total0 = machine_busy()
                t0 = time.perf_counter()
                await add_cids(data, cids(b"bench shared reprovide ", n_cids), "cids")
                added = time.perf_counter() - t0
                await wait_provided(engine, n_cids, heads, timeout=args.timeout)
                wall = time.perf_counter() - t0
                busy1, total1 = machine_busy()
                head_cpu = [(proc_cpu(h.proc.pid) or 0.0) - c for h, c in zip(heads, head_cpu0, strict=True)]
                js_now = [proc_cpu(p) for p in js_pids]
                js_cpu = None if None in js_now or None in js_cpu0 else sum(js_now) - sum(js_cpu0)  # type: ignore[arg-type]
                pg_now = await backend_pids(base, name)
                pg_cpu = sum((proc_cpu(p) or 0.0) - pg_cpu0.get(p, 0.0) for p in pg_now) if pg_now else None
                load1 = os.getloadavg()[0]
                # A visit's counter moves just after its keys are marked provided.
                with anyio.move_on_after(60):
                    while sum([await anyio.to_thread.run_sync(h.provided) for h in heads]) < n_cids:
                        await anyio.sleep(0.5)
                shares = [await anyio.to_thread.run_sync(h.provided) for h in heads]
                print(f"  {n_heads} head(s): routing tables {tables}, provide add {added:.1f} s, "
                      f"all provided after {wall:.1f} s, shares {shares}", flush=True)
                return Result(n_heads, wall, added, shares, head_cpu, js_cpu, pg_cpu,
                              (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1), (load0, load1))
            finally:
                for h in heads:
                    if h.proc.poll() is None:
                        h.proc.send_signal(signal.SIGTERM)
                for h in heads:
                    try:
                        h.proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        h.proc.kill()
                        h.proc.wait(timeout=10)
    finally:
        if engine is not None:
            await engine.dispose()
        await admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table(results: list[Result], n_cids: int) -> None:
    base = next((r for r in results if r.heads == 1), None)
    print()
    print("| heads | wall s | CIDs/s | vs 1 head | shares | extra | CPU s per head | heads CPU s | js CPU s | PG backends CPU s | machine busy cores | load before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rate = n_cids / r.wall
        ratio = f"{rate / (n_cids / base.wall):.2f}x" if base else ""
        shares = " / ".join(f"{s:,.0f}" for s in r.shares)
        per_head = " / ".join(f"{c:.1f}" for c in r.head_cpu)
        js = f"{r.js_cpu:.1f}" if r.js_cpu is not None else "?"
        pg = f"≥ {r.pg_cpu:.1f}" if r.pg_cpu is not None else "?"
        print(f"| {r.heads} | {r.wall:.1f} | {rate:,.0f} | {ratio} | {shares} | {sum(r.shares) - n_cids:,.0f} | {per_head} | {sum(r.head_cpu):.1f} | {js} | {pg} "
              f"| {r.busy_cores:.2f} | {r.load[0]:.1f} / {r.load[1]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cids", type=int, default=20_000, help="CIDs in the provide list")
    parser.add_argument("--js", type=int, default=4, help="js-libp2p DHT servers")
    parser.add_argument("--heads", default="1,3", help="head counts to measure, comma-separated, in this order")
    parser.add_argument("--head-mode", choices=["server", "client"], default="server", help="the heads' --mode")
    parser.add_argument("--bootstrap-wait", type=float, default=15.0, help="at most this long for routing tables to fill")
    parser.add_argument("--timeout", type=float, default=1800.0, help="at most this long for the list to be provided, per head count")
    args = parser.parse_args()
    counts = [int(x) for x in args.heads.split(",")]
    node_bin = shutil.which("node")
    if node_bin is None:
        raise SystemExit("node not found")
    ensure_node_modules()
    base = os.environ.get("DHTSTORE_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    work = Path(tempfile.mkdtemp(prefix="bench-shared-reprovide-"))
    print(f"{args.cids:,} CIDs, {args.js} js servers, heads {counts} in {args.head_mode} mode; {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; logs in {work}", flush=True)
    results = [anyio.run(one_run, node_bin, base, n, args.js, args.cids, args, work) for n in counts]
    table(results, args.cids)
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
