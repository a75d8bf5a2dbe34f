"""Issue 7 end to end: three `dhtstore run` processes, each its own identity, on one
PostgreSQL store, beside js-libp2p servers on loopback, share a provide list of 30,000
CIDs.

1. Every CID goes out exactly once across the three: the heads' "keys provided"
   counters add up to 30,000, and the records the heads received from each other (in
   the shared store) credit each CID to exactly one head, each head with as many CIDs
   as its counter. The js servers hold the same (checked on a sample).
2. Killed with SIGKILL while it holds a claim on a slice of 6,000 further CIDs, a head
   leaves no CID unprovided: its claim lapses (``--claim-lease``) and the others
   provide its slice; every CID ends up with a record, at the heads and at js.

Each head sends every CID to every server (4 js + the other 2 heads: fewer than 20),
so the test moves about 200,000 ADD_PROVIDER messages.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from jspeer import JsPeer, start_js_peers
from sqlalchemy import func, select
from test_scaling_out import cid_of, free_port, sha256_mh, wait_listening

from dhtstore.config import read_identity
from dhtstore.crypto.keys import PrivateKey
from dhtstore.data.engine import make_engine
from dhtstore.data.models import ProvidedKeyRow, ProviderRecordRow, ReprovideClaimRow
from dhtstore.network import multiaddrs
from dhtstore.node import Node, NodeOptions
from dhtstore.peerid import PeerId
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.postgres, pytest.mark.slow]

JS_SERVERS = 4
CIDS = 30_000
LATE_CIDS = 6_000
LEASE = 15  # seconds: --claim-lease; renewed every 5 s, so only a 10 s stall of a loaded head lets a claim lapse
CHECKERS = 16  # GET_PROVIDERS in flight while reading the js servers' records
JS_SAMPLE = 1_000  # CIDs asked of the js servers per phase (js answers a few hundred a second)


@dataclass
class Head:
    name: str
    proc: subprocess.Popen
    peer_id: PeerId
    port: int
    metrics: str

    def provided(self) -> float:
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10).read().decode()
        m = re.search(r"^dhtstore_provide_keys_provided_total(?:\{[^}]*\})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0


def cids(tag: bytes, n: int) -> list[bytes]:
    return [sha256_mh(tag + b"%d" % i) for i in range(n)]


async def cli(*args: str) -> str:
    with anyio.fail_after(300):
        done = await anyio.run_process([sys.executable, "-m", "dhtstore", *args], check=False)
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, f"dhtstore {' '.join(args)}\n{out}"
    return out


async def add_cids(data: Path, mhs: Sequence[bytes], name: str) -> None:
    listing = data / f"{name}.txt"
    listing.write_text("".join(cid_of(mh) + "\n" for mh in mhs))
    await cli("provide", "add", "--data-dir", str(data), "--from-file", str(listing))


async def count_provided(engine) -> int:  # type: ignore[no-untyped-def]
    k = ProvidedKeyRow
    stmt = select(func.count()).where(k.last_provided_at.is_not(None))
    async with engine.connect() as conn:
        return (await conn.execute(stmt)).scalar_one()


async def wait_provided(engine, total: int, heads: Sequence[Head], timeout: float) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while await count_provided(engine) < total:
            for h in heads:
                assert h.proc.poll() is None, f"{h.name} exited"
            await anyio.sleep(0.5)


async def providers_in_store(engine, mhs: Sequence[bytes], heads: set[PeerId]) -> dict[bytes, set[PeerId]]:  # type: ignore[no-untyped-def]
    """For each key, the heads whose records the heads received from each other."""
    wanted = set(mhs)
    seen: dict[bytes, set[PeerId]] = {mh: set() for mh in mhs}
    r = ProviderRecordRow
    stmt = select(r.key_mh, r.peer_id).where(r.peer_id.in_([h.to_bytes() for h in heads]))
    async with engine.connect() as conn:
        for key, peer in (await conn.execute(stmt)).all():
            if key in wanted:
                seen[key].add(PeerId.from_bytes(peer))
    return seen


async def providers_at_js(client: Node, js: Sequence[JsPeer], mhs: Sequence[bytes], heads: set[PeerId]) -> dict[bytes, set[PeerId]]:
    """For each key, the heads that js servers hold a provider record of (each key asked of one server)."""
    infos = [PeerInfo(p.peer_id, (multiaddrs.split_peer_id(multiaddrs.parse(p.addr))[0].to_bytes(),)) for p in js]
    seen: dict[bytes, set[PeerId]] = {}
    todo = list(enumerate(mhs))

    async def worker() -> None:
        while todo:
            i, mh = todo.pop()
            reply = await client.messenger.request(infos[i % len(infos)], Message(MessageType.GET_PROVIDERS, key=mh))
            seen[mh] = {p.peer_id for p in reply.provider_peers} & heads

    with anyio.fail_after(300):
        async with anyio.create_task_group() as tg:
            for _ in range(CHECKERS):
                tg.start_soon(worker)
    return seen


async def start_head(data: Path, name: str, bootstrap: str) -> Head:
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    argv = [
        sys.executable, "-m", "dhtstore", "run", "--data-dir", str(data), "--identity", name, "--mode", "server",
        "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--bootstrap", bootstrap, "--metrics", metrics,
        "--claim-lease", str(LEASE), "--status-interval", "5",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    head = Head(name, proc, read_identity(data / "identities" / f"{name}.key").peer_id(), port, metrics)
    await wait_listening(port, proc)
    return head


async def test_three_processes_share_30k_cids_once_each_and_cover_a_killed_one(js_harness, pg_store_url, tmp_path):
    data = tmp_path / "dht"
    names = ["head-1", "head-2", "head-3"]
    await cli("init", "--data-dir", str(data), "--store", pg_store_url, "--identity", names[0])
    for name in names[1:]:
        await cli("init", "--data-dir", str(data), "--identity", name)
    engine = make_engine(pg_store_url)
    heads: list[Head] = []
    async with AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        js = await stack.enter_async_context(start_js_peers(js_harness, JS_SERVERS))
        for peer in js[1:]:
            await peer.dial(js[0].addr)
        try:
            for name in names:
                heads.append(await start_head(data, name, js[0].addr))
            client = await stack.enter_async_context(Node.start(NodeOptions(
                identity=PrivateKey.generate(), listen=["/ip4/127.0.0.1/tcp/0"], mode="client", allow_private_addrs=True,
                ip_diversity=False, reprovide=False,
            )))  # fmt: skip
            ids = {h.peer_id for h in heads}

            # 1. 30,000 CIDs, three heads: each CID exactly once.
            first = cids(b"shared reprovide ", CIDS)
            await add_cids(data, first, "first")
            await wait_provided(engine, CIDS, heads, timeout=900)
            with anyio.fail_after(60):  # a visit's counter moves just after its keys are marked
                while sum(shares := [await anyio.to_thread.run_sync(h.provided) for h in heads]) < CIDS:
                    await anyio.sleep(0.5)
            await anyio.sleep(2)  # ... and no further
            shares = [await anyio.to_thread.run_sync(h.provided) for h in heads]
            assert sum(shares) == CIDS, f"each CID marked provided once: shares {shares}"
            assert sum(1 for n in shares if n) >= 2, f"the work was shared: {shares}"
            seen = await providers_in_store(engine, first, ids)
            assert all(len(s) == 1 for s in seen.values()), f"{sum(len(s) != 1 for s in seen.values())} CIDs not credited to exactly one head"
            for head, share in zip(heads, shares, strict=True):
                assert sum(1 for s in seen.values() if s == {head.peer_id}) == share, head.name
            at_js = await providers_at_js(client, js, random.Random(1).sample(first, JS_SAMPLE), ids)
            assert all(s == seen[mh] for mh, s in at_js.items()), "js holds the same records"

            # 2. 6,000 more; the head holding a claim on some of them is killed.
            late = cids(b"late ", LATE_CIDS)
            await add_cids(data, late, "late")
            with anyio.fail_after(120):
                while True:
                    async with engine.connect() as conn:
                        owners = (await conn.execute(select(ReprovideClaimRow.owner))).scalars().all()
                    if owners and await count_provided(engine) > CIDS:
                        break
                    await anyio.sleep(0.05)
            victim = next(h for h in heads if str(h.peer_id) in owners)
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(timeout=30)
            survivors = [h for h in heads if h is not victim]
            await wait_provided(engine, CIDS + LATE_CIDS, survivors, timeout=300)
            seen = await providers_in_store(engine, late, ids)
            assert all(seen.values()), f"{sum(not s for s in seen.values())} CIDs unprovided"
            doubles = [s for s in seen.values() if len(s) > 1]
            assert all(victim.peer_id in s for s in doubles), "only the killed head's unconfirmed sends go out twice"
            at_js = await providers_at_js(client, js, random.Random(2).sample(late, JS_SAMPLE), ids)
            assert all(at_js.values()), f"{sum(not s for s in at_js.values())} CIDs missing at js"
        finally:
            for head in heads:
                if head.proc.poll() is None:
                    head.proc.send_signal(signal.SIGTERM)
            for head in heads:
                out, _ = head.proc.communicate(timeout=60)
                if head.proc.returncode not in (0, -signal.SIGKILL):
                    print(f"--- {head.name} exited {head.proc.returncode}\n{out}")
        for head in heads:
            if head is not victim:
                assert head.proc.returncode == 0, head.name
