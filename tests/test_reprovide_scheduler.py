"""The Reprovider as the node runs it: APScheduler on the real loop, CLI edits picked up
while it runs, a clean stop; and kill -9 in the middle of a sweep loses nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry

from dhtstore.data.schema import open_store
from dhtstore.multihash import cid_string
from dhtstore.provider.api import KeyState
from dhtstore.provider.claims import SqlClaimStore
from dhtstore.provider.metrics import ProvideMetrics
from dhtstore.provider.providelist import ProvideListStore
from dhtstore.provider.reprovider import NEXT_JOB, Reprovider
from dhtstore.provider.service import STATE_CYCLE_START, STATE_ORDER, ProvideListService
from dhtstore.sim import SimConfig, SimNetwork
from dhtstore.sim.provider import RecordingMessenger

pytestmark = pytest.mark.anyio


def cids(n: int, tag: bytes) -> list[str]:
    return [cid_string(b"\x12\x20" + hashlib.sha256(tag + b"%d" % i).digest()) for i in range(n)]


async def wait_until(predicate, what: str, limit: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(limit):  # a bound for a hung test, not a timing assertion
        while not await predicate():
            await anyio.sleep(0.05)


async def test_runs_on_apscheduler_and_picks_up_cli_changes(store_url: str) -> None:
    net = SimNetwork(SimConfig(nodes=120, seed=21, latency=(0.0, 0.0)))  # real time: no delays
    node = net.node(0)
    messenger = RecordingMessenger(node.messenger)
    engine = await open_store(store_url)
    registry = CollectorRegistry()
    r = Reprovider(
        ProvideListStore(engine), SqlClaimStore(engine), node.router, messenger, lambda: node.info, poll_interval=0.1,
        metrics=ProvideMetrics(registry),
    )
    cli_engine = await open_store(store_url)  # the CLI: another engine on the same file
    cli = ProvideListService(ProvideListStore(cli_engine), SqlClaimStore(cli_engine))
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(r.run)
            first = cids(30, b"api")
            await r.start_provide(first)

            async def all_provided() -> bool:
                return all([e.state is KeyState.PROVIDED async for e in r.provide_list()])

            await wait_until(all_provided, "keys given to start_provide are provided")
            assert len(messenger.sent) == 30
            # One timer, pointed at the earliest next reprovide (once the worker is through).
            async def armed() -> bool:
                assert r._scheduler is not None
                job = r._scheduler.get_job(NEXT_JOB)
                return job is not None and int(job.next_run_time.timestamp()) == await r.store.next_due()

            await wait_until(armed, "the timer is set for the next due key")
            assert r._scheduler is not None
            assert len(r._scheduler.get_jobs()) == 3  # that timer, the poll and the metrics refresh

            added_by_cli = cids(5, b"cli")
            await cli.start_provide(added_by_cli)
            await wait_until(all_provided, "keys added by the CLI while the node runs are provided")
            assert len(messenger.sent) == 35
            assert await cli.stop_provide(added_by_cli[:2]) == 2
            assert len([e async for e in r.provide_list()]) == 33

            status = await cli.status()  # what `dhtstore provide status` shows
            assert status.keys == 33 and status.provided_within_interval == 33 and status.overdue == 0
            assert registry.get_sample_value("dhtstore_provide_messages_total") == sum(messenger.sent.values())
            tg.cancel_scope.cancel()
        state = await r.store.get_state()
        assert STATE_ORDER in state and STATE_CYCLE_START in state
        assert (await r.status()).current_region is None, "every claim released when the reprovider stops"
    finally:
        await engine.dispose()
        await cli_engine.dispose()


CHILD = textwrap.dedent(
    """
    import sys, anyio, hashlib
    from dhtstore.data.schema import open_store
    from dhtstore.multihash import cid_string
    from dhtstore.provider.claims import SqlClaimStore
    from dhtstore.provider.providelist import ProvideListStore
    from dhtstore.provider.reprovider import Reprovider
    from dhtstore.sim import SimConfig, SimNetwork

    url, n = sys.argv[1], int(sys.argv[2])
    net = SimNetwork(SimConfig(nodes=300, seed=22, latency=(0.0, 0.0)))
    node = net.node(0)

    class Slow:  # after the first region, each ADD_PROVIDER takes real time: kill lands mid-sweep
        slow = False
        async def request(self, peer, message):
            return await node.messenger.request(peer, message)
        async def send(self, peer, message):
            if self.slow:
                await anyio.sleep(0.002)
            await node.messenger.send(peer, message)

    async def main():
        engine = await open_store(url)
        slow = Slow()
        r = Reprovider(ProvideListStore(engine), SqlClaimStore(engine), node.router, slow, lambda: node.info)
        await r.start_provide([cid_string(b"\\x12\\x20" + hashlib.sha256(b"k%d" % i).digest()) for i in range(n)])
        sweep = await r.open()
        while (report := await sweep.visit(r.clock())) is not None:
            print("VISITED", report.prefix, report.provided, flush=True)
            slow.slow = True
        print("DONE", flush=True)

    anyio.run(main)
    """
)


@pytest.mark.slow
async def test_kill_9_mid_sweep_loses_no_entry_and_no_schedule_state(sqlite_store_url: str, tmp_path: Path) -> None:
    n = 3_000
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, sqlite_store_url, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("VISITED"), line + proc.stderr.read() if proc.stderr else ""
        done_prefix = line.split()[1]
        await anyio.sleep(0.5)  # well into the second region's sends
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    engine = await open_store(sqlite_store_url)
    try:
        store = ProvideListStore(engine)
        claims = SqlClaimStore(engine)
        service = ProvideListService(store, claims)
        entries = [e async for e in service.provide_list()]
        assert len(entries) == n  # every entry survived
        provided = [e for e in entries if e.state is KeyState.PROVIDED]
        pending = [e for e in entries if e.state is KeyState.PENDING]
        assert provided and pending and len(provided) + len(pending) == n
        state = await store.get_state()
        assert STATE_ORDER in state and STATE_CYCLE_START in state
        regions = {str(g.prefix) for g in await store.regions()}
        assert done_prefix in regions or any(done_prefix.startswith(p.rstrip("*")) for p in regions)

        # A restarted node finishes the work without redoing the finished region.
        net = SimNetwork(SimConfig(nodes=300, seed=22, latency=(0.0, 0.0)))
        node = net.node(0)
        messenger = RecordingMessenger(node.messenger)
        r = Reprovider(store, claims, node.router, messenger, lambda: node.info)
        await r.run_due()
        finished = {e.multihash for e in provided}
        assert not finished & set(messenger.sent)
        assert all([e.state is KeyState.PROVIDED async for e in r.provide_list()])
    finally:
        await engine.dispose()


class StalledPolls(ProvideListStore):
    """A provide list whose poll query hangs once ``stall`` is set (a store that stopped
    answering), so the scheduler's shutdown finds a poll job running."""

    stall = False
    stalled: anyio.Event

    async def next_due_for(self, owner: str, now: int) -> int | None:
        if self.stall:
            self.stalled.set()
            await anyio.sleep_forever()
        return await super().next_due_for(owner, now)


async def test_a_poll_running_at_shutdown_ends_quietly(sqlite_store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    net = SimNetwork(SimConfig(nodes=30, seed=22, latency=(0.0, 0.0)))
    node = net.node(0)
    engine = await open_store(sqlite_store_url)
    store = StalledPolls(engine)
    store.stalled = anyio.Event()
    r = Reprovider(store, SqlClaimStore(engine), node.router, node.messenger, lambda: node.info, poll_interval=0.05)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(r.run)
            store.stall = True
            with anyio.fail_after(10):
                await store.stalled.wait()
            r.stop()  # the scheduler's shutdown cancels the running poll
        await anyio.sleep(0.1)  # the cancelled job's task ends on the loop
    finally:
        await engine.dispose()
    # The stalled poll outlives its 50 ms interval, so APScheduler may skip a run (its
    # WARNING, which a loaded machine shows); what must not appear is anything else.
    noisy = [
        rec for rec in caplog.records
        if rec.levelname in ("ERROR", "WARNING") and "maximum number of running instances" not in rec.getMessage()
    ]
    assert not noisy, caplog.text
