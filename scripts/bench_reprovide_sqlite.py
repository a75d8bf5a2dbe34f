#!/usr/bin/env python
"""The provide list at scale on SQLite or PostgreSQL (issue 17): import, first provide, one cycle, status.

1. ``dhtstore init`` a scratch data directory, write N CIDs to a file and import them
   with ``dhtstore provide add --from-file`` (a child process: its wall and CPU time and
   peak RSS);
2. in this process, the sweep on the SQL provide list (``ProvideListStore``) with the
   exact oracle of ``bench_reprovide.py --provider-only`` (lookups answered at almost no
   CPU, ADD_PROVIDER counted and dropped): the first provide, then one cycle of due work
   once the schedule has settled (``sim.provider.settled_after``). The SQL store does
   real I/O, so it runs in real time with a clock that jumps to the next due key;
3. ``dhtstore provide status`` and ``dhtstore provide ls`` on the full list (children, timed).

With ``--store-url`` on a local PostgreSQL, each phase also reports the server's share:
the CPU of its processes (so run nothing else on that server meanwhile) and the WAL
it wrote.

Checks, and fails loudly when off: ADD_PROVIDER per CID in the cycle ≈ 20 and 100 % of
the list provided in it.

    python scripts/bench_reprovide_sqlite.py --cids 2000000
    python scripts/bench_reprovide_sqlite.py --cids 10000000 --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_import import cid_line  # noqa: E402
from bench_reprovide import CountingMessenger, CycleCheck, OracleDHT, cycle_check, publish  # noqa: E402
from sqlalchemy import text  # noqa: E402

from dhtstore.data.engine import (
    default_store_url,  # noqa: E402
    store_size_bytes,  # noqa: E402
)
from dhtstore.data.schema import open_store  # noqa: E402
from dhtstore.peerid import PeerId  # noqa: E402
from dhtstore.provider.claims import SqlClaimStore  # noqa: E402
from dhtstore.provider.providelist import ProvideListStore  # noqa: E402
from dhtstore.provider.reprovider import Reprovider  # noqa: E402
from dhtstore.sim.provider import settled_after  # noqa: E402
from dhtstore.types import PeerInfo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cli(where: Path | str, *args: str, stdout: Any = subprocess.DEVNULL) -> dict[str, float]:
    """Run ``dhtstore ARGS`` from this checkout on a data directory or a store URL; its
    wall and CPU seconds and peak RSS (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    location = ["--data-dir", str(where)] if isinstance(where, Path) else ["--store", where]
    subprocess.run([sys.executable, "-m", "dhtstore", *args, *location], check=True, env=env, stdout=stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall": time.monotonic() - t,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "rss": after.ru_maxrss / 1024,  # the largest child so far: children run from small to large here
    }


def postgres_cpu(database: str | None = None) -> float | None:
    """CPU seconds of the local PostgreSQL server so far: its live processes, plus the
    exited backends and autovacuum workers the postmaster has reaped (cutime, cstime).
    Given ``database``, only the live backends connected to it (their process title names
    it): the share of one store while other databases of the server are in use too.
    None when no postgres process is visible (SQLite, or a server on another machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, seen = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text_ = stat.read_text()
            title = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        name, fields = text_[text_.index("(") + 1 : text_.rindex(")")], text_[text_.rindex(")") + 2 :].split()
        if name != "postgres" and not name.startswith("postgres:"):
            continue
        if database is not None and f" {database} " not in title:
            continue
        seen = True
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += utime + stime + cutime + cstime  # a child's c* stay 0: only the postmaster reaps
    return total / tick if seen else None


class Meter:
    """One phase's CPU and wall time, and on PostgreSQL the server's CPU (all of it, and
    the store's own backends) and WAL bytes."""

    def __init__(self, engine: Any):
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._database = engine.url.database
        self._server: tuple[float | None, float | None] = (None, None)

    async def _wal(self) -> int | None:
        if not self._pg:
            return None
        async with self._engine.connect() as conn:
            return int((await conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))).scalar_one())

    def _server_cpu(self) -> tuple[float | None, float | None]:
        # a local server beside SQLite is not its share
        return (postgres_cpu(), postgres_cpu(self._database)) if self._pg else (None, None)

    async def start(self) -> None:
        self._cpu, self._wall, self._wal0 = time.process_time(), time.monotonic(), await self._wal()
        self._server = self._server_cpu()

    async def stop(self, **extra: Any) -> dict[str, Any]:
        out = {"cpu": time.process_time() - self._cpu, "wall": time.monotonic() - self._wall, **extra}
        (server, backends), wal = self._server_cpu(), await self._wal()
        if self._server[0] is not None and server is not None:
            out["server_cpu"] = server - self._server[0]
        if self._server[1] is not None and backends is not None:
            out["backend_cpu"] = backends - self._server[1]
        if self._wal0 is not None and wal is not None:
            out["wal"] = wal - self._wal0
        return out


class JumpingClock:
    """Epoch seconds that stand still while work runs and jump to the next due key."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


async def run_until(r: Reprovider, clock: JumpingClock, until: float) -> int:
    """Visit the work due by ``until``, jumping the clock from due key to due key; returns visits."""
    visits = 0
    while (due := await r.next_unclaimed_due()) is not None and due <= until:
        clock.now = max(clock.now, due)
        visits += len(await r.run_due(due_by=until))
    clock.now = max(clock.now, until)
    return visits


async def sweep(store_url: str, nodes: int, n: int, seed: int, first_only: bool) -> dict[str, Any]:
    engine = await open_store(store_url)
    try:
        store, claims = ProvideListStore(engine), SqlClaimStore(engine)
        dht, messenger = OracleDHT(nodes, seed), CountingMessenger()
        me = PeerInfo(PeerId(b"\x00\x24\x08\x01\x12\x20" + bytes(32)), (b"\x04\x7f\x00\x00\x01",))
        clock = JumpingClock(time.time())  # the CLI added the keys at the real time: all are due now
        r = Reprovider(store, claims, dht, messenger, lambda: me, clock=clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress, r, clock, messenger, n)
            out = await phases(r, clock, dht, messenger, engine, store, first_only)
            tg.cancel_scope.cancel()
        return out
    finally:
        await engine.dispose()


async def progress(r: Reprovider, clock: JumpingClock, messenger: CountingMessenger, n: int) -> None:
    """A line a minute: long runs (10M CIDs take hours) show where they are. Counts are
    since the start; the schedule's hour tells the phase (0: the first provide, then up
    to ``max_delay``: settling, then the cycle)."""
    t0, start = time.monotonic(), clock()
    while True:
        await anyio.sleep(60)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"  {time.monotonic() - t0:,.0f} s, schedule at +{(clock() - start) / 3600:.2f} h: {messenger.sent:,} ADD_PROVIDER ({messenger.sent / n:.2f} per CID), "
            f"{time.process_time():,.0f} CPU-s, peak RSS {rss:.0f} MB; sweep {r.sweep.counters if r.sweep else ''}",
            flush=True,
        )


async def phases(
    r: Reprovider, clock: JumpingClock, dht: OracleDHT, messenger: CountingMessenger, engine: Any, store: ProvideListStore,
    first_only: bool,
) -> dict[str, Any]:
    """The first provide, then (unless ``first_only``) one cycle once settled."""
    out: dict[str, Any] = {}
    meter = Meter(engine)
    await meter.start()
    first = await r.run_due()
    out["first"] = await meter.stop(visits=len(first), sent=messenger.sent, lookups=dht.lookups)
    out["rss_first"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"first provide: {out['first']}", flush=True)
    if first_only:
        out["sent"], out["provided"] = messenger.sent, await provided_since(engine, int(clock()) - 1)
        return out
    start = settled_after(clock(), r.config)
    await run_until(r, clock, start)
    lookups, sent = dht.lookups, messenger.sent
    await meter.start()
    visits = await run_until(r, clock, start + r.interval)
    out["cycle"] = await meter.stop(visits=visits)
    out["lookups"], out["sent"] = dht.lookups - lookups, messenger.sent - sent
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = await store.counts(int(clock()), int(r.interval), int(r.behind_after))
    out["provided"] = await provided_since(engine, start)
    out["counts"] = counts
    print(f"cycle: {out['cycle']}, {out['sent']:,} ADD_PROVIDER, peak RSS {out['rss']:.0f} MB", flush=True)
    return out


async def provided_since(engine: Any, since: int) -> int:
    from sqlalchemy import func, select

    from dhtstore.data.models import ProvidedKeyRow

    async with engine.connect() as conn:
        stmt = select(func.count()).where(ProvidedKeyRow.last_provided_at > since)
        return int((await conn.execute(stmt)).scalar_one())


async def store_size(store_url: str) -> int:
    """Bytes on disk: the SQLite file with its WAL, or the PostgreSQL database."""
    engine = await open_store(store_url)
    try:
        if engine.dialect.name != "postgresql":
            return store_size_bytes(engine.url) or 0
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar_one())
    finally:
        await engine.dispose()


def n_or_1(n: int) -> int:
    return max(n, 1)


def import_cids(data_dir: Path, scratch: Path, n: int) -> dict[str, float]:
    cli(data_dir, "init")
    cids = scratch / "cids.txt"
    with cids.open("w") as f:
        f.writelines(cid_line(i) + "\n" for i in range(n))
    imported = cli(data_dir, "provide", "add", "--from-file", str(cids))
    print(f"import: {imported}", flush=True)
    return imported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cids", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=10_000, help="servers of the oracle network")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, help="scratch data directory (default: a temporary one)")
    ap.add_argument("--first-only", action="store_true", help="stop after the first provide (checked like a cycle)")
    ap.add_argument("--append", type=Path, help="append the results section to this file (BENCHMARKS.md)")
    ap.add_argument(
        "--store-dir",
        type=Path,
        help="a data directory already holding the --cids CIDs of this script (imported apart, e.g. at 10M): "
        "skip init and import, and leave it in place",
    )
    ap.add_argument(
        "--store-url",
        help="like --store-dir, a PostgreSQL store (postgresql+asyncpg://…) already holding the --cids CIDs",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        where: Path | str
        if args.store_url is not None:
            where, imported, store_url = args.store_url, None, args.store_url
        else:
            data_dir = args.store_dir or Path(scratch) / "data"
            imported = None if args.store_dir else import_cids(data_dir, Path(scratch), args.cids)
            where, store_url = data_dir, default_store_url(data_dir)
        r = anyio.run(sweep, store_url, args.nodes, args.cids, args.seed, args.first_only)
        size = anyio.run(store_size, store_url)
        print(f"store on disk: {size / n_or_1(args.cids):.0f} bytes per CID", flush=True)
        status = cli(where, "provide", "status")
        print(f"provide status: {status}", flush=True)
        listing = cli(where, "provide", "ls", "--all")
        check = cycle_check(r["sent"], r["provided"], args.cids, "the first provide" if args.first_only else "the cycle")
        report(args, imported, r, status, listing, size, check)


def server_lines(r: dict[str, Any], n: int) -> list[str]:
    """PostgreSQL's own share of each phase: its CPU (all its processes) and the WAL written."""
    lines = []
    for phase in ("first", "cycle"):
        p = r.get(phase, {})
        if "server_cpu" in p:
            lines.append(
                f"- PostgreSQL server in the {'first provide' if phase == 'first' else 'cycle'}: "
                f"{p['server_cpu']:,.1f} CPU-s ({p['server_cpu'] / n * 1e6:,.0f} µs per CID, "
                f"{p['server_cpu'] / max(p['cpu'], 1e-9):.2f}× the sweep process; the store's backends "
                f"{p.get('backend_cpu', 0):,.1f} CPU-s, {p.get('backend_cpu', 0) / n * 1e6:,.0f} µs per CID), "
                f"{p['wal'] / 2**20:,.0f} MB of WAL ({p['wal'] / n:,.0f} bytes per CID)."
            )
    return lines


def report(
    args: argparse.Namespace, imported: dict[str, float] | None, r: dict[str, Any], status: dict[str, float],
    listing: dict[str, float], size: int, check: CycleCheck,
) -> None:
    n = args.cids
    load = os.getloadavg()
    per_k = 1000 / n
    imports = [] if imported is None else [
        ("import (`provide add --from-file`)", imported["wall"], imported["cpu"], f"{imported['rss']:.0f} MB (the CLI)"),
    ]
    rows = [
        *imports,
        ("first provide", r["first"]["wall"], r["first"]["cpu"], f"{r['rss_first']:.0f} MB"),
        *([("one cycle (provider-only)", r["cycle"]["wall"], r["cycle"]["cpu"], f"{r['rss']:.0f} MB")] if "cycle" in r else []),
        ("`provide status`", status["wall"], status["cpu"], ""),
        ("`provide ls --all` (to /dev/null)", listing["wall"], listing["cpu"], ""),
    ]
    lines = [
        f"### Provide list on {'PostgreSQL' if args.store_url else 'SQLite'}, {n:,} CIDs, {args.nodes:,} oracle servers",
        "",
        f"`python scripts/bench_reprovide_sqlite.py --cids {n} --nodes {args.nodes}{' --first-only' if args.first_only else ''}"
        f"{' --store-dir DIR' if args.store_dir else ''}{' --store-url URL' if args.store_url else ''}` — {time.strftime('%Y-%m-%d')}, "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} at the end (shared machine).",
        "",
        "| phase | wall s | CPU s | CPU ms per 1,000 CIDs | peak RSS |",
        "|---|---:|---:|---:|---|",
        *[f"| {name} | {wall:,.1f} | {cpu:,.1f} | {cpu * per_k * 1000:,.1f} | {rss} |" for name, wall, cpu, rss in rows],
        "",
        f"- import: {'measured apart (--store-dir or --store-url)' if imported is None else format(n / imported['wall'], ',.0f') + ' CIDs/s'}; "
        f"store on disk {size / 2**20:,.0f} MB ({size / n:.0f} bytes per CID).",
        f"- first provide {r['first']['visits']} visits, {r['first']['lookups']:,} lookups, {r['first']['sent']:,} ADD_PROVIDER"
        + (f"; cycle {r['cycle']['visits']} visits, {r['lookups']:,} lookups, {r['sent']:,} ADD_PROVIDER." if "cycle" in r else "."),
        *server_lines(r, n),
        f"- {check.line}",
        "",
    ]
    publish("\n".join(lines), check, args.append)


if __name__ == "__main__":
    main()
