"""The sweeping reprovider in the many-node simulation, on the in-memory provide list
(``provider.memory``, held to the SQL store's rules by the store tests).

Virtual time (``sim.VirtualTimeLoop``): a 22-hour cycle runs in seconds.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable

import anyio
import pytest

from dhtstore.kadkey import Key
from dhtstore.multihash import cid_string
from dhtstore.network.api import KadMessenger
from dhtstore.peerid import PeerId
from dhtstore.provider.api import KeyState, SweepConfig
from dhtstore.provider.memory import MemoryClaimStore, MemoryProvideList
from dhtstore.provider.reprovider import Reprovider
from dhtstore.server.api import InvalidRequest, RequestHandler
from dhtstore.sim import SimConfig, SimNetwork, SimNode
from dhtstore.sim.provider import Oracle, RecordingMessenger, holders, run_schedule, settled_after
from dhtstore.types import Message, MessageType, PeerInfo

HOUR = 3600.0


def multihashes(n: int, tag: bytes = b"sim") -> list[bytes]:
    return [b"\x12\x20" + hashlib.sha256(tag + b"%d" % i).digest() for i in range(n)]


class Store:
    """One provide list with its claims, kept across the node's restarts."""

    def __init__(self) -> None:
        self.claims = MemoryClaimStore()
        self.list = MemoryProvideList(self.claims)


def reprovider(
    store: Store, net: SimNetwork, node: SimNode, messenger: KadMessenger, config: SweepConfig | None = None
) -> Reprovider:
    """A (re)started node's reprovider on ``store``."""
    return Reprovider(store.list, store.claims, node.router, messenger, lambda: node.info, clock=net.wall_clock, config=config)


async def all_held(net: SimNetwork, node: SimNode, keys: list[bytes]) -> list[int]:
    oracle = Oracle(net, node.peer_id)
    return [await holders(oracle, mh, node.peer_id) for mh in keys]


@pytest.mark.slow
def test_one_cycle_with_a_restart_2000_nodes_20000_cids() -> None:
    store = Store()
    net = SimNetwork(SimConfig(nodes=2000, seed=11))
    node = net.node(0)
    keys = multihashes(20_000)
    removed = keys[:100]
    kept = keys[100:]

    async def first_provide() -> None:
        r = reprovider(store, net, node, node.messenger)
        await r.start_provide([cid_string(mh) for mh in keys])
        reports = await r.run_due()
        lookups = sum(x.lookups for x in reports)
        assert lookups < len(keys) / 50  # one lookup per CID would be 20,000
        # Each once, though regions were refined meanwhile.
        assert sum(x.provided for x in reports) == len(keys)
        assert not any(x.failed for x in reports)
        assert min(await all_held(net, node, keys)) == 20  # every CID at all of its 20 closest
        # Found by real lookups from 20 random nodes.
        rng = random.Random(5)
        for asker in rng.sample(net.nodes[1:], 20):
            for mh in rng.sample(keys, 5):
                found = await asker.router.find_providers(mh)
                assert node.peer_id in {p.peer_id for p in found}
        status = await r.status()
        assert (status.keys, status.pending, status.overdue, status.failing) == (20_000, 0, 0, 0)
        assert status.provided_within_interval == 20_000 and not status.falling_behind
        assert await r.stop_provide([cid_string(mh) for mh in removed]) == len(removed)

    provide_started = net.wall_clock()
    net.run(first_provide)
    cycle_start = net.wall_clock()
    interval, grace = SweepConfig().interval, SweepConfig().grace
    recorder = RecordingMessenger(node.messenger, clock=net.wall_clock)
    visited: list[list[str]] = [[], []]

    async def run_until(part: int, until: float) -> None:
        r = reprovider(store, net, node, recorder)  # a fresh start on the same store
        reports = await run_schedule(r, until)
        visited[part] = [str(x.prefix) for x in reports]
        assert sum(x.lookups for x in reports) < len(keys) / 50

    net.run(run_until, 0, cycle_start + interval / 2)
    assert visited[0] and recorder.sent  # the first half did reprovide some regions
    # The second half, until the last turn of a region provided at the end of the first
    # provide (a key moved to a refined region's turn may wait up to max_delay more).
    net.run(run_until, 1, cycle_start + interval + SweepConfig().max_delay + (cycle_start - provide_started))
    # Every kept key went out in the cycle, removed ones never; and no key went out twice
    # within an interval: the restarted node did not redo the regions finished before it.
    assert set(recorder.episodes) == set(kept)
    for times in recorder.episodes.values():
        assert all(later - earlier >= interval - grace for earlier, later in zip(times, times[1:]))
    assert set(recorder.sent.values()) <= {20, 40}

    async def check() -> None:  # a sample: every key was checked after the first provide
        held = await all_held(net, node, random.Random(6).sample(kept, 2_000))
        assert min(held) == 20

    net.run(check)


@pytest.mark.slow
def test_a_node_down_longer_than_the_interval_catches_up_oldest_first() -> None:
    store = Store()
    net = SimNetwork(SimConfig(nodes=2000, seed=12))
    node = net.node(0)
    keys = multihashes(3_000, b"down")

    async def provide_then_run(hours: float) -> None:
        r = reprovider(store, net, node, node.messenger)
        await r.start_provide([cid_string(mh) for mh in keys])
        await run_schedule(r, net.wall_clock() + hours * HOUR)

    net.run(provide_then_run, 5)
    # Down for 50 hours: longer than the interval, and every record on the network expired.
    net.run(anyio.sleep, 50 * HOUR)

    async def come_back() -> None:
        assert max(await all_held(net, node, keys)) == 0
        r = reprovider(store, net, node, node.messenger)
        before = {mh: e for mh, e in [(e.multihash, e) async for e in r.provide_list()]}
        assert all(e.state is KeyState.OVERDUE for e in before.values())
        status = await r.status()
        assert status.falling_behind and status.overdue == len(keys)
        reports = await r.run_due()
        # Oldest first: each visit's keys were due no earlier than the previous visit's.
        order = []
        for report in reports:
            due = [e.next_due_at for mh, e in before.items() if report.prefix.contains(_kad(mh))]
            if due:
                order.append(min(due))
        assert order == sorted(order) and len(order) > 10
        assert min(await all_held(net, node, keys)) == 20
        after = await r.status()
        assert after.overdue == 0 and not after.falling_behind

    net.run(come_back)


def _kad(mh: bytes) -> int:
    return Key.for_multihash(mh).value


def test_few_keys_are_provided_one_by_one_and_failures_are_reported() -> None:
    store = Store()
    net = SimNetwork(SimConfig(nodes=300, seed=13))
    node = net.node(0)
    keys = multihashes(2, b"few")

    async def run() -> None:
        r = reprovider(store, net, node, node.messenger)
        await r.start_provide([cid_string(mh) for mh in keys])
        reports = await r.run_due()
        assert all(x.individual for x in reports) and sum(x.lookups for x in reports) == len(keys)
        assert min(await all_held(net, node, keys)) == 20

        # The node goes offline: every attempt fails, keys back off and are reported, never dropped.
        net.set_online(node, False)
        clock_start = net.wall_clock()
        await run_schedule(r, clock_start + 30 * HOUR)
        entries = [e async for e in r.provide_list()]
        assert len(entries) == 2
        assert all(e.state is KeyState.FAILING and e.last_error for e in entries)
        status = await r.status()
        assert status.failing == 2 and status.falling_behind
        net.set_online(node, True)
        net.refresh()  # the node's routing table refresh re-bootstraps it after the outage
        await run_schedule(r, net.wall_clock() + 2 * HOUR)  # the next retry succeeds
        entries = [e async for e in r.provide_list()]
        assert all(e.state is KeyState.PROVIDED and e.attempts == 0 and e.last_error is None for e in entries)

    net.run(run)


class ClosesStreamOnPing:
    """A server as rust-libp2p's kad handler is: it closes the stream on a Kademlia PING."""

    def __init__(self, inner: RequestHandler):
        self.inner = inner

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        if request.type is MessageType.PING:
            raise InvalidRequest("Kademlia PING messages are unsupported")
        return await self.inner.handle(sender, request)


def test_servers_that_refuse_ping_still_confirm_the_records() -> None:
    """The sweep confirms its ADD_PROVIDERs with a request every implementation answers."""
    store = Store()
    net = SimNetwork(SimConfig(nodes=300, seed=15))
    node = net.node(0)
    for server in net.nodes[1:]:
        server.handler = ClosesStreamOnPing(server.handler)
    keys = multihashes(500, b"rust")

    async def run() -> None:
        r = reprovider(store, net, node, node.messenger, SweepConfig(confirm_every=16))
        await r.start_provide([cid_string(mh) for mh in keys])
        reports = await r.run_due()
        assert sum(x.provided for x in reports) == len(keys) and not any(x.failed for x in reports)
        assert min(await all_held(net, node, keys)) == 20
        entries = [e async for e in r.provide_list()]
        assert all(e.state is KeyState.PROVIDED for e in entries)

    net.run(run)


@pytest.mark.slow
def test_unresponsive_servers_do_not_collapse_the_regions() -> None:
    store = Store()
    # Lookups that come back short (silent peers dropped) must not be taken for the
    # whole network: the records still reach the 20 closest live servers.
    net = SimNetwork(SimConfig(nodes=500, seed=14, unresponsive=0.1))
    node = net.live_nodes()[0]
    keys = multihashes(2_000, b"silent")

    async def run() -> None:
        r = reprovider(store, net, node, node.messenger)
        await r.start_provide([cid_string(mh) for mh in keys])
        reports = await r.run_due()
        assert r.sweep is not None and len(r.sweep.regions) >= 8
        assert sum(x.lookups for x in reports) < len(keys) / 20
        assert min(await all_held(net, node, keys)) == 20

    net.run(run)


@pytest.mark.slow
def test_three_processes_on_one_store_provide_each_key_once_per_cycle() -> None:
    """Three provider identities share one provide list (``provider.claims``): through the
    first provide and a reprovide cycle, every key goes out once per cycle, from one of
    them, and each takes a share."""
    net = SimNetwork(SimConfig(nodes=1000, seed=13))
    nodes = [net.node(i) for i in range(3)]
    keys = multihashes(4_000, b"shared")
    interval = SweepConfig().interval
    recorders = [RecordingMessenger(n.messenger, clock=net.wall_clock) for n in nodes]

    async def three_processes(until: float) -> None:
        store = Store()
        config = SweepConfig(claim_batch=100)  # several slices per region, so all three share them
        processes = [reprovider(store, net, n, rec, config) for n, rec in zip(nodes, recorders, strict=True)]
        await processes[0].start_provide([cid_string(mh) for mh in keys])
        async with anyio.create_task_group() as tg:
            for r in processes:
                tg.start_soon(run_schedule, r, until)

    net.run(three_processes, net.wall_clock() + interval + 2 * HOUR)
    grace = SweepConfig().grace
    for mh in keys:
        # When it went out, from whichever process: the first provide, then at its region's
        # turn (at least a grace later), then one interval after that if the turn came early.
        times = sorted(t for rec in recorders for t in rec.episodes.get(mh, ()))
        assert len(times) >= 2 and times[1] - times[0] >= grace / 2, f"{mh.hex()[:12]}: {times}"
        assert all(b - a >= interval - grace for a, b in zip(times[1:], times[2:])), f"{mh.hex()[:12]}: {times}"
        assert sum(rec.sent[mh] for rec in recorders) == 20 * len(times)
    assert all(rec.sent for rec in recorders), "each process took a share"


class NeverConfirms:
    """A server that takes ADD_PROVIDERs but closes the stream on the request that would
    confirm them (a FIND_NODE for its own id), as rust-libp2p's kad handler does on a PING."""

    def __init__(self, inner: RequestHandler, own_id: bytes):
        self.inner = inner
        self.own_id = own_id

    async def handle(self, sender: PeerInfo, request: Message) -> Message | None:
        if request.type is MessageType.FIND_NODE and request.key == self.own_id:
            raise InvalidRequest("closing the stream")
        return await self.inner.handle(sender, request)


class SendTimes:
    """A messenger that notes when each ADD_PROVIDER went out, by key."""

    def __init__(self, inner: KadMessenger, clock: Callable[[], float]):
        self.inner = inner
        self.clock = clock
        self.times: dict[bytes, list[float]] = defaultdict(list)

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        return await self.inner.request(peer, message)

    async def send(self, peer: PeerInfo, message: Message) -> None:
        if message.type is MessageType.ADD_PROVIDER:
            self.times[message.key].append(self.clock())
        await self.inner.send(peer, message)


def never_confirming(net: SimNetwork, share: float, seed: int) -> set[PeerId]:
    """Make ``share`` of the servers (node 0, the provider, aside) never confirm."""
    servers = random.Random(seed).sample(net.nodes[1:], round(share * (len(net.nodes) - 1)))
    for server in servers:
        server.handler = NeverConfirms(server.handler, server.peer_id.to_bytes())
    return {s.peer_id for s in servers}


def sample(r: Reprovider, name: str) -> float:
    value = r.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.slow
def test_servers_that_never_confirm_get_each_key_a_bounded_number_of_times_per_cycle() -> None:
    """No server confirms: every key goes out at most ``max_sends_per_cycle`` times in
    each cycle between two turns of its region (then once per turn), never again and
    again; the sends count as unconfirmed, not unsent, in the reports and the metrics."""
    store = Store()
    net = SimNetwork(SimConfig(nodes=300, seed=16))
    node = net.node(0)
    never_confirming(net, 1.0, seed=1)
    keys = multihashes(400, b"unconfirmed")
    config = SweepConfig()
    interval = config.interval
    recorder = SendTimes(node.messenger, net.wall_clock)
    reports = []

    async def run() -> None:
        r = reprovider(store, net, node, recorder, config)
        await r.start_provide([cid_string(mh) for mh in keys])
        reports.extend(await run_schedule(r, net.wall_clock() + 2 * interval))
        entries = {e.multihash: e async for e in r.provide_list()}
        # Deferred to their turn, reported failing (sent, never confirmed), never dropped.
        assert all(e.state is KeyState.FAILING and e.last_error and "0 confirmed" in e.last_error for e in entries.values())
        unconfirmed = sum(x.unconfirmed for x in reports)
        assert unconfirmed >= 3 * len(keys) and not any(x.failed or x.provided for x in reports)
        assert sample(r, "dhtstore_provide_keys_unconfirmed_total") == unconfirmed
        assert sample(r, "dhtstore_provide_keys_deferred_total") == sum(x.deferred for x in reports) >= 2 * len(keys)
        assert sample(r, "dhtstore_provide_keys_failed_total") == 0
        assert sample(r, "dhtstore_provide_peers_unconfirmed_total") > 0
        for mh in keys:
            # The key's turns: its next one (where it waits now), and every interval before.
            turn = entries[mh].next_due_at.timestamp()
            times = recorder.times[mh]
            assert times and max(times) < turn
            per_cycle = Counter(math.floor((turn - t) / interval) for t in times)
            assert max(per_cycle.values()) <= config.max_sends_per_cycle * config.replication, (mh.hex()[:12], per_cycle)
            assert len(times) <= (config.max_sends_per_cycle + 2) * config.replication  # not ~45 retries in 44 h

    net.run(run)


@pytest.mark.slow
def test_a_few_servers_that_never_confirm_do_not_stop_a_region_being_provided_once_per_cycle() -> None:
    store = Store()
    net = SimNetwork(SimConfig(nodes=300, seed=17))
    node = net.node(0)
    never_confirming(net, 0.3, seed=2)
    keys = multihashes(400, b"some-unconfirmed")
    interval, grace = SweepConfig().interval, SweepConfig().grace
    recorder = RecordingMessenger(node.messenger, clock=net.wall_clock)

    async def run() -> None:
        r = reprovider(store, net, node, recorder)
        await r.start_provide([cid_string(mh) for mh in keys])
        first = await r.run_due()
        assert sum(x.provided for x in first) == len(keys)
        reports = await run_schedule(r, net.wall_clock() + interval + SweepConfig().max_delay)
        assert not any(x.unconfirmed or x.failed for x in first + reports)
        assert sum(x.peers_unconfirmed for x in first + reports) > 0
        assert sample(r, "dhtstore_provide_peers_unconfirmed_total") == sum(x.peers_unconfirmed for x in first + reports)
        assert sample(r, "dhtstore_provide_keys_unconfirmed_total") == 0
        # The first provide, then the region's turn (and one interval later if it came
        # early): each time to the key's 20 closest, never twice in a cycle.
        assert set(recorder.sent.values()) <= {40, 60} and set(recorder.episodes) == set(keys)
        for mh, times in recorder.episodes.items():
            assert recorder.sent[mh] == 20 * len(times)
            assert all(b - a >= interval - grace for a, b in zip(times[1:], times[2:]))

    net.run(run)


@pytest.mark.slow
def test_every_key_goes_out_exactly_once_per_cycle() -> None:
    """Every key once in a cycle measured once the schedule has settled (``settled_after``):
    a key's first reprovide comes within an interval plus ``max_delay`` of its first
    provide (a window of one interval right after the first provide misses the keys a
    later visit moved to a refined region's turn: the "0.97 per cycle" of the benchmark)."""
    store = Store()
    net = SimNetwork(SimConfig(nodes=1000, seed=18))
    node = net.node(0)
    keys = multihashes(4_000, b"once")
    config = SweepConfig()
    recorder = RecordingMessenger(node.messenger, clock=net.wall_clock)

    async def run() -> None:
        r = reprovider(store, net, node, recorder, config)
        await r.start_provide([cid_string(mh) for mh in keys])
        first = await r.run_due()
        assert sum(x.provided for x in first) == len(keys)
        start = settled_after(net.wall_clock(), config)
        await run_schedule(r, start)
        before = Counter(recorder.sent)
        reports = await run_schedule(r, start + config.interval)
        in_cycle = recorder.sent - before
        assert set(in_cycle) == set(keys) and set(in_cycle.values()) == {config.replication}, Counter(in_cycle.values())
        assert sum(x.keys for x in reports) == len(keys) and not any(x.failed or x.unconfirmed for x in reports)
        for mh, times in recorder.episodes.items():
            # The first provide, then the region's turn (at least a grace later) within an
            # interval plus max_delay (and the minutes a visit takes), then every interval.
            assert config.grace <= times[1] - times[0] <= config.interval + config.max_delay + 600, times
            assert all(abs(b - a - config.interval) < 600 for a, b in zip(times[1:], times[2:])), times

    net.run(run)


@pytest.mark.slow
def test_a_changing_list_is_provided_exactly_once_per_cycle() -> None:
    """Keys added and removed all through a cycle: removed ones never go out again, added
    ones go out within the poll interval plus a visit and then on their region's turn,
    the others exactly once, on their schedule; nothing is sent twice."""
    store = Store()
    net = SimNetwork(SimConfig(nodes=1000, seed=19))
    node = net.node(0)
    keys = multihashes(3_000, b"changing")
    new_keys = multihashes(600, b"added")
    config = SweepConfig()
    interval, grace = config.interval, config.grace
    poll = 60.0
    recorder = SendTimes(node.messenger, net.wall_clock)
    removed_at: dict[bytes, float] = {}
    added_at: dict[bytes, float] = {}
    rounds = 6

    async def change(r: Reprovider, start: float) -> None:
        rng = random.Random(4)
        doomed = rng.sample(keys, 100 * rounds)
        for i in range(rounds):
            await anyio.sleep(start + (i + 0.5) * interval / rounds - net.wall_clock())
            gone = doomed[100 * i : 100 * (i + 1)]
            fresh = new_keys[100 * i : 100 * (i + 1)]
            assert await r.stop_provide([cid_string(mh) for mh in gone]) == len(gone)
            assert (await r.start_provide([cid_string(mh) for mh in fresh])).added == len(fresh)
            removed_at.update((mh, net.wall_clock()) for mh in gone)
            added_at.update((mh, net.wall_clock()) for mh in fresh)

    async def run() -> None:
        r = reprovider(store, net, node, recorder, config)
        await r.start_provide([cid_string(mh) for mh in keys])
        await r.run_due()
        start = settled_after(net.wall_clock(), config)
        await run_schedule(r, start)
        before = {mh: len(times) for mh, times in recorder.times.items()}
        async with anyio.create_task_group() as tg:
            tg.start_soon(change, r, start)
            await run_schedule(r, start + interval, poll=poll)
        status = await r.status()
        assert status.keys == len(keys) and status.failing == 0

        for mh, at in removed_at.items():
            assert max(recorder.times[mh]) < at, "a removed key went out again"
        for mh, at in added_at.items():
            times = recorder.times[mh]
            assert at <= times[0] <= at + poll + 600, (at, times[:1])
            episodes = episodes_of(times)
            assert all(len(e) == config.replication for e in episodes), "each time to its 20 closest, once"
            assert all(b[0] - a[0] >= grace for a, b in zip(episodes, episodes[1:]))
        for mh in set(keys) - set(removed_at):
            in_cycle = recorder.times[mh][before[mh]:]
            assert len(in_cycle) == config.replication, (mh.hex()[:12], len(in_cycle))
            # On its schedule: one interval after its previous turn, or its region's first
            # turn after the first provide (at most an interval plus max_delay after it).
            earlier = episodes_of(recorder.times[mh][: before[mh]])
            gap = in_cycle[0] - earlier[-1][0]
            if len(earlier) > 1:
                assert abs(gap - interval) < 600, (mh.hex()[:12], gap)
            else:
                assert grace <= gap <= interval + config.max_delay + 600, (mh.hex()[:12], gap)

    net.run(run)


def episodes_of(times: list[float], gap: float = 600.0) -> list[list[float]]:
    """Send times grouped into visits (sends less than ``gap`` apart)."""
    out: list[list[float]] = []
    for t in sorted(times):
        if out and t - out[-1][-1] < gap:
            out[-1].append(t)
        else:
            out.append([t])
    return out


class StallingSends:
    """A messenger whose ADD_PROVIDERs to ``stalled`` servers never complete (a stream
    whose window never opens); counts the attempts per server."""

    def __init__(self, inner: KadMessenger, stalled: set[PeerId]):
        self.inner = inner
        self.stalled = stalled
        self.attempts: Counter[PeerId] = Counter()

    async def request(self, peer: PeerInfo, message: Message) -> Message:
        return await self.inner.request(peer, message)

    async def send(self, peer: PeerInfo, message: Message) -> None:
        if peer.peer_id in self.stalled:
            self.attempts[peer.peer_id] += 1
            await anyio.sleep_forever()
        await self.inner.send(peer, message)


def test_stalled_sends_time_out_and_a_stalled_server_is_given_up_after_its_failure_streak() -> None:
    """Each ADD_PROVIDER is bounded by ``send_timeout``, also though the sweep keeps one
    deadline per run of sends rather than a timer each: a server whose sends stall gets at
    most ``max_failure_streak + 1`` of them per visit, and the regions are still provided
    by the other servers."""
    store = Store()
    net = SimNetwork(SimConfig(nodes=300, seed=21))
    node = net.node(0)
    stalled = {s.peer_id for s in random.Random(3).sample(net.nodes[1:], 15)}
    messenger = StallingSends(node.messenger, stalled)
    keys = multihashes(2000, b"stall")
    config = SweepConfig()

    async def run() -> None:
        r = reprovider(store, net, node, messenger, config)
        await r.start_provide([cid_string(mh) for mh in keys])
        started = net.wall_clock()
        with anyio.fail_after(6 * HOUR):  # virtual time: a send never bounded would hang here
            reports = await run_schedule(r, net.wall_clock() + HOUR)
        assert r.sweep is not None
        visits = len(reports)
        assert stalled & set(messenger.attempts), "no stalled server was sent to: the test tests nothing"
        assert all(n <= (config.max_failure_streak + 1) * visits for n in messenger.attempts.values())
        assert r.sweep.counters.message_failures == sum(messenger.attempts.values())
        entries = [e async for e in r.provide_list()]
        assert all(e.state is KeyState.PROVIDED for e in entries) and len(entries) == len(keys)
        # Each stall cost one timeout (between send_timeout and twice it), not more.
        assert net.wall_clock() - started < HOUR + 2 * config.send_timeout * sum(messenger.attempts.values())

    net.run(run)
