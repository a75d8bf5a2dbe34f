#!/usr/bin/env python3
"""``provide status`` and ``provide ls`` on a large provide list (issue 17: ≤ 1 s at 10M).

Times, on the store given (a data directory or a store URL):
- in this process, ``ProvideListService.status()`` (counters and index ranges, revision
  0006) and a page of ``provide_list`` (the first, and one from the middle of the list);
- the CLI commands as children (``dhtstore provide status``, ``dhtstore provide ls``), and
  the same commands on an empty store made here: the difference is what the
  list's size costs, the rest is the interpreter's start-up and imports.

Checks, and fails loudly: the status's key count equals ``COUNT(*)`` over the list.

    python scripts/bench_provide_status.py --data-dir /work/bench10m/data
    python scripts/bench_provide_status.py --store postgresql+asyncpg://postgres@127.0.0.1:5432/big
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dhtstore.data.engine import default_store_url
from dhtstore.data.models import ProvidedKeyRow
from dhtstore.data.schema import open_store
from dhtstore.provider.standalone import open_provide_list

PAGE = 100


def cli(location: list[str], *args: str) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "dhtstore", *args, *location], check=True, env=env, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": time.monotonic() - t, "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}


async def timed(fn: Any) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.monotonic()
    result = await fn()
    return result, time.monotonic() - wall, time.process_time() - cpu


async def in_process(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with open_provide_list(url) as provider:
        status, wall, cpu = await timed(provider.status)
        out["status"] = (status, wall, cpu)

        async def first_page() -> list[Any]:
            return [e async for e in provider.provide_list(None, PAGE)]

        page, wall, cpu = await timed(first_page)
        out["first_page"] = (len(page), wall, cpu)

        async def middle_page() -> list[Any]:
            return [e async for e in provider.provide_list(b"\x12\x20\x80", PAGE)]

        page, wall, cpu = await timed(middle_page)
        out["middle_page"] = (len(page), wall, cpu)
    engine = await open_store(url)
    try:
        async with engine.connect() as conn:
            out["count"] = (await conn.execute(select(func.count()).select_from(ProvidedKeyRow))).scalar_one()
    finally:
        await engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path)
    where.add_argument("--store")
    args = ap.parse_args()
    url = args.store or default_store_url(args.data_dir)
    location = ["--store", args.store] if args.store else ["--data-dir", str(args.data_dir)]
    r = anyio.run(in_process, url)
    status, s_wall, s_cpu = r["status"]
    print(f"list: {r['count']:,} keys (COUNT(*)); status says {status.keys:,}, pending {status.pending:,}, "
          f"overdue {status.overdue:,}, provided within the interval {status.provided_within_interval:,}")
    print(f"in process: status {s_wall * 1000:.0f} ms wall, {s_cpu * 1000:.0f} ms CPU; "
          f"first page of {PAGE}: {r['first_page'][1] * 1000:.0f} ms; a middle page: {r['middle_page'][1] * 1000:.0f} ms")
    big_status, big_ls = cli(location, "provide", "status"), cli(location, "provide", "ls")
    with tempfile.TemporaryDirectory() as scratch:
        small = ["--data-dir", str(Path(scratch) / "data")]
        cli(small, "init")
        small_status, small_ls = cli(small, "provide", "status"), cli(small, "provide", "ls")
    for name, big, ref in (("provide status", big_status, small_status), ("provide ls", big_ls, small_ls)):
        print(f"`dhtstore {name}`: {big['wall']:.2f} s wall, {big['cpu']:.2f} s CPU on the list; "
              f"{ref['wall']:.2f} s wall, {ref['cpu']:.2f} s CPU on an empty store (start-up)")
    if status.keys != r["count"]:
        sys.exit(f"benchmark check failed: status counts {status.keys:,} keys, the list holds {r['count']:,}")


if __name__ == "__main__":
    main()
