#!/usr/bin/env python3
"""Where a process's CPU went, by component, from a py-spy raw profile.

    py-spy record --pid PID --duration 10 --rate 250 --gil --format raw --output prof.raw
    python scripts/profile_summary.py prof.raw

``--gil`` samples only the thread holding the GIL: Python's CPU, not its idle waits.
Each sample is charged to the innermost frame that belongs to a component: a dhtstore
module (``server/kadserver.py`` …), else a library (sqlalchemy, aiosqlite, anyio, …),
else the asyncio event loop, else "other". Printed: the share of samples per
component, largest first.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FILE = re.compile(r"\(([^:()]+):\d+\)$")
_LIBRARIES = ("sqlalchemy", "aiosqlite", "asyncpg", "anyio", "greenlet", "cryptography", "google/protobuf", "multiaddr")


def component(path: str) -> str | None:
    path = "/" + path  # py-spy shortens paths to their package: "dhtstore/peerid.py"
    if "/dhtstore/" in path:
        return path.rsplit("/dhtstore/", 1)[1]
    for lib in _LIBRARIES:
        if f"/{lib}/" in path:
            return lib
    if "/asyncio/" in path or path.endswith(("/selectors.py", "/threading.py")):
        return "asyncio (event loop, threads)"
    return None


def summarize(raw: Path) -> Counter[str]:
    shares: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        name = "other"
        for frame in reversed(stack.split(";")):
            m = _FILE.search(frame)
            if m and (found := component(m.group(1))) is not None:
                name = found
                break
        shares[name] += int(count)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    shares = summarize(args.raw)
    total = sum(shares.values())
    if not total:
        raise SystemExit(f"{args.raw}: no samples")
    print(f"{total} samples")
    for name, n in shares.most_common(args.top):
        print(f"{n / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
