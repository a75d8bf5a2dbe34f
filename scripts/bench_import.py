#!/usr/bin/env python3
"""``dhtstore provide add --from-file`` as the list grows (issue 17: import ≥ 20k CIDs/s).

Imports ``--steps`` files of ``--step`` CIDs each, one after the other, into one SQLite
store (``dhtstore init`` first if the data directory is new), each as a child process
under ``/usr/bin/time -v``: one line per step with wall, CPU, peak RSS and bytes
written, so the cost per CID can be read against the list's size. The CIDs are those
of ``bench_reprovide.multihashes`` (CIDv1, raw), CID ``i`` of the whole run being
``sha256("bench%d" % i)``; each step's file is written once under ``--cids-dir`` and
reused by later runs.

"written" is ``/usr/bin/time``'s file system outputs: a page counts each time it is dirtied
again after writeback, so on a freshly copied store it said four times what the disk
wrote. Compare the disk's own figure (``/proc/diskstats`` around a step, with a ``sync``).

    nice -n 5 python scripts/bench_import.py --data-dir /work/importbench/d --steps 3
    nice -n 5 python scripts/bench_import.py --data-dir /work/importbench/d --first 3 --steps 1   # a 4th million
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

DHTSTORE = [sys.executable, "-m", "dhtstore"]


def cid_line(i: int) -> str:
    """CIDv1 (raw codec, base32) of ``bench_reprovide.multihashes``' i-th multihash;
    the same string as ``multihash.cid_string``, without py-cid's cost per call."""
    mh = b"\x12\x20" + hashlib.sha256(b"bench%d" % i).digest()
    return "b" + base64.b32encode(b"\x01\x55" + mh).decode().lower().rstrip("=")


def step_file(cids_dir: Path, step: int, size: int) -> Path:
    path = cids_dir / f"cids_{size}_{step}.txt"
    if not path.exists():
        part = path.with_suffix(".part")
        with part.open("w") as f:
            for i in range(step * size, (step + 1) * size):
                f.write(cid_line(i) + "\n")
        part.rename(path)
    return path


_TIME_FIELDS = {
    "user": r"User time \(seconds\): ([\d.]+)",
    "system": r"System time \(seconds\): ([\d.]+)",
    "rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
    "outputs": r"File system outputs: (\d+)",
    "inputs": r"File system inputs: (\d+)",
}


def timed(cmd: list[str]) -> dict[str, float]:
    t0 = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = {"wall": wall}
    for name, pattern in _TIME_FIELDS.items():
        m = re.search(pattern, done.stderr)
        out[name] = float(m.group(1)) if m else float("nan")
    out["stdout"] = done.stdout.strip()  # type: ignore[assignment]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--cids-dir", type=Path, default=Path("/work/importbench/cids"))
    ap.add_argument("--step", type=int, default=1_000_000, help="CIDs per step (per child)")
    ap.add_argument("--first", type=int, default=0, help="the first step's number (steps before it imported already)")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    args.cids_dir.mkdir(parents=True, exist_ok=True)
    if not (args.data_dir / "dhtstore.db").exists():
        subprocess.run([*DHTSTORE, "init", "--data-dir", str(args.data_dir)], check=True, capture_output=True)
    print("| list before | CIDs/s | wall s | CPU s (user + sys) | µs CPU per CID | peak RSS MB | written GB | KB per CID |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for step in range(args.first, args.first + args.steps):
        path = step_file(args.cids_dir, step, args.step)
        r = timed([*DHTSTORE, "provide", "add", "--from-file", str(path), "--data-dir", str(args.data_dir)])
        cpu = r["user"] + r["system"]
        written = r["outputs"] * 512
        print(
            f"| {step * args.step:,} | {args.step / r['wall']:,.0f} | {r['wall']:.1f} | {cpu:.1f} ({r['user']:.1f} + {r['system']:.1f}) "
            f"| {cpu / args.step * 1e6:.0f} | {r['rss_kb'] / 1024:.0f} | {written / 1e9:.2f} | {written / args.step / 1e3:.1f} |",
            flush=True,
        )
        print(f"  ({r['stdout']})", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
