"""The sweep with a full routing table: region sizes counted in the table (a range of
its key index) instead of estimated from a lookup, so the sweep and the full table work
together (kubo#11085: the estimate failing during the accelerated client's crawl put
every CID in one region). In the simulation, on the in-memory provide list."""

from __future__ import annotations

import bisect

from test_reprovide_sim import Store, all_held, multihashes

from dhtstore.kadkey import BITS, Key
from dhtstore.multihash import cid_string
from dhtstore.provider.reprovider import Reprovider
from dhtstore.routingtable.fulltable import FullTable
from dhtstore.sim import SimConfig, SimNetwork, SimNode

K = 20


class CountingTable:
    """A FullTable's ``PrefixCounts``, with the questions asked recorded."""

    def __init__(self, table: FullTable):
        self.table = table
        self.asked: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.table)

    def count_under_prefix(self, bits: int, length: int) -> int:
        self.asked.append((bits, length))
        return self.table.count_under_prefix(bits, length)


def crawled_table(node: SimNode, peers: list[SimNode]) -> FullTable:
    """What the crawler would have put in the node's full table: ``peers``."""
    table = FullTable(Key.for_peer(node.peer_id))
    for p in peers:
        table.add(p.info, 0.0)
    return table


def exact_prefix_len(sorted_keys: list[int], kad: int) -> int:
    """The longest prefix of ``kad`` holding K keys, by brute force over the bit lengths."""
    best = 0
    for length in range(1, BITS):
        first = (kad >> (BITS - length)) << (BITS - length)
        last = first + (1 << (BITS - length)) - 1
        if bisect.bisect_right(sorted_keys, last) - bisect.bisect_left(sorted_keys, first) < K:
            break
        best = length
    return best


def test_count_under_prefix_is_the_range_of_the_key_index() -> None:
    net = SimNetwork(SimConfig(nodes=300, seed=31))
    node, *others = net.live_nodes()
    table = crawled_table(node, others)
    keys = sorted(Key.for_peer(p.peer_id).value for p in others)
    assert table.count_under_prefix(0, 0) == len(others) == 299
    for length in (1, 3, 6, 9):
        counts = [table.count_under_prefix(b, length) for b in range(1 << length)]
        assert sum(counts) == len(others)
        assert counts == [sum(1 for k in keys if k >> (BITS - length) == b) for b in range(1 << length)]


def run_sweep(net: SimNetwork, node: SimNode, sizes: CountingTable | None, keys: list[bytes]) -> Reprovider:
    store = Store()
    r = Reprovider(store.list, store.claims, node.router, node.messenger, lambda: node.info, clock=net.wall_clock, region_sizes=sizes)

    async def run() -> None:
        await r.start_provide([cid_string(mh) for mh in keys])
        await r.run_due()
        assert min(await all_held(net, node, keys)) == K

    net.run(run)
    return r


def test_the_sweep_sizes_its_regions_from_the_full_table() -> None:
    net = SimNetwork(SimConfig(nodes=500, seed=32))
    node, *others = net.live_nodes()
    sizes = CountingTable(crawled_table(node, others))
    keys = multihashes(2_000, b"exact")
    r = run_sweep(net, node, sizes, keys)
    assert r.sweep is not None and sizes.asked
    regions = r.sweep.regions
    assert len(regions) >= 8  # not one region for the whole list
    server_keys = sorted(Key.for_peer(p.peer_id).value for p in others)
    for region in regions:  # every region holds k servers of the table
        assert sizes.table.count_under_prefix(region.prefix.bits, region.prefix.length) >= K
    # Each question series walks one key's prefix down to the first length holding
    # fewer than k: the length before it is the exact one for that key.
    key_kads = [Key.for_multihash(mh).value for mh in keys]
    series: list[list[tuple[int, int]]] = []
    for bits, length in sizes.asked:
        if length == 1:
            series.append([])
        series[-1].append((bits, length))
    assert series and all([n for _b, n in s] == list(range(1, len(s) + 1)) for s in series)
    for walked in series:
        bits, failing = walked[-1]
        kad = next(k for k in key_kads if k >> (BITS - failing) == bits)
        assert exact_prefix_len(server_keys, kad) == failing - 1

def test_a_table_half_crawled_still_splits_the_list_into_regions() -> None:
    # The crawl is under way: the table holds a third of the network. Its counts are
    # smaller than the truth (regions start wider) but never collapse to one region,
    # and the exploration's lookups still find the 20 closest servers of each key.
    net = SimNetwork(SimConfig(nodes=600, seed=33))
    node, *others = net.live_nodes()
    sizes = CountingTable(crawled_table(node, others[: len(others) // 3]))
    keys = multihashes(2_000, b"partial")
    r = run_sweep(net, node, sizes, keys)
    assert r.sweep is not None and sizes.asked
    assert len(r.sweep.regions) >= 8


def test_a_table_with_fewer_than_k_servers_falls_back_to_the_estimate() -> None:
    net = SimNetwork(SimConfig(nodes=300, seed=34))
    node, *others = net.live_nodes()
    sizes = CountingTable(crawled_table(node, others[: K - 1]))  # just started: nothing to count on
    keys = multihashes(500, b"thin")
    r = run_sweep(net, node, sizes, keys)
    assert sizes.asked == []
    assert r.sweep is not None and len(r.sweep.regions) >= 2
