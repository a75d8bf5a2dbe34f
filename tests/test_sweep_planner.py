"""The sweep's planner (``provider.planner``) on plain values: no network, no store, no
event loop. Exploration, allocation of keys to servers, per-server sending, outcomes
and backoff, and the region bookkeeping."""

from __future__ import annotations

import random

import pytest

from dhtstore.kadkey import BITS, Key
from dhtstore.peerid import PeerId
from dhtstore.provider.api import RegionRow, SweepConfig, VisitReport
from dhtstore.provider.keyspace import Prefix, allocate
from dhtstore.provider.planner import (
    Delivery,
    Exploration,
    ExploreError,
    Outcome,
    PeerSending,
    Turns,
    attempt_report,
    backoff,
    combine,
    covered_prefix_len,
    free_prefix,
    mean_prefix_len,
    narrower,
    part_row,
    plan_parts,
    reached_enough,
    region_of,
    replace_regions,
    retry,
    reusable,
    too_big,
)
from dhtstore.types import PeerInfo

CONFIG = SweepConfig()
K = CONFIG.replication


def peers(n: int, seed: int = 1) -> list[PeerInfo]:
    rng = random.Random(seed)
    return [PeerInfo(PeerId(b"\x00\x24\x08\x01\x12\x20" + rng.randbytes(32)), ()) for _ in range(n)]


def closest(everyone: list[PeerInfo], target: int, k: int = K) -> list[PeerInfo]:
    """What an exact find_closest_peers answers."""
    return sorted(everyone, key=lambda p: Key.for_peer(p.peer_id).value ^ target)[:k]


def explore(ex: Exploration, everyone: list[PeerInfo], rng: random.Random) -> list[Prefix]:
    """Drive an exploration with exact answers toward a random key in each gap; the gaps asked."""
    asked = []
    while (gap := ex.next_gap()) is not None:
        asked.append(gap)
        target = gap.first | rng.getrandbits(BITS - gap.length)
        ex.record(target, closest(everyone, target))
    return asked


def test_exploration_learns_every_server_of_the_region() -> None:
    everyone = peers(2000)
    rng = random.Random(2)
    start = Prefix.parse("0110")  # ~125 of 2000 servers
    ex = Exploration(start, CONFIG)
    explore(ex, everyone, rng)
    ex.finish()
    inside = {Key.for_peer(p.peer_id).value for p in everyone if ex.region.contains(Key.for_peer(p.peer_id).value)}
    assert ex.region == start and ex.count_under(start) >= K
    assert inside <= set(ex.peers), "every server under the region was found"
    assert ex.lookups <= CONFIG.max_exploration_lookups


def test_a_region_too_small_for_k_servers_is_widened() -> None:
    everyone = peers(300)  # a 6-bit prefix holds ~5 servers
    ex = Exploration(Prefix.parse("101101"), CONFIG)
    explore(ex, everyone, random.Random(3))
    ex.finish()
    assert ex.region.length < 6
    assert ex.region.covers(Prefix.parse("101101")) and ex.count_under(ex.region) >= K


def test_exploration_stops_after_lookups_that_find_nobody_new() -> None:
    everyone = peers(50)
    same = closest(everyone, 0)
    ex = Exploration(Prefix.parse("0"), SweepConfig(max_stale_lookups=2))
    ex.record(0, same)  # new servers
    ex.record(1, same)  # nobody new
    assert ex.next_gap() is not None
    ex.record(2, same)  # nobody new, twice in a row
    assert ex.next_gap() is None


def test_exploration_stops_at_the_lookup_budget() -> None:
    ex = Exploration(Prefix.parse("0"), SweepConfig(max_exploration_lookups=3))
    for i, group in enumerate([peers(20, 10), peers(20, 11), peers(20, 12)]):
        assert ex.next_gap() is not None
        ex.record(i, group)
    assert ex.next_gap() is None
    ex2 = Exploration(Prefix.parse("0"), SweepConfig(max_exploration_lookups=1))
    ex2.record(0, peers(20, 13), counted=False)  # the lookup that estimated the region size is free
    assert ex2.next_gap() is not None


def test_an_empty_answer_or_no_server_at_all_is_an_explore_error() -> None:
    with pytest.raises(ExploreError):
        Exploration(Prefix.parse("0"), CONFIG).record(0, [])
    ex = Exploration(Prefix.parse("0"), CONFIG)
    ex.skip(Prefix.parse("0"))
    with pytest.raises(ExploreError):
        ex.finish()


def test_parts_tile_the_region_and_the_slice_takes_its_share() -> None:
    everyone = peers(3000)
    ex = Exploration(Prefix.parse("01"), CONFIG)
    explore(ex, everyone, random.Random(4))
    ex.finish()
    turns = Turns(order=random.Random(5).getrandbits(BITS), cycle_start=1_000_000, config=CONFIG)
    piece = Prefix.parse("0110")
    now = 1_000_500.0
    plans = plan_parts(ex, piece, turns, now)
    assert len(plans) > 1
    assert sum(2 ** (BITS - p.part.length) for p in plans) == 2 ** (BITS - ex.region.length), "the parts tile the region"
    for p in plans:
        assert len(p.peers) >= K and all(p.part.contains(k) for k in p.peer_keys)
        assert [Key.for_peer(x.peer_id).value for x in p.peers] == p.peer_keys == sorted(p.peer_keys)
        assert p.turn == turns.next(p.part, now) and p.turn > now
        assert p.provided_before == int(p.turn - CONFIG.interval - CONFIG.max_delay)
        if p.part.covers(piece) or piece.covers(p.part):
            assert p.mine is not None and piece.covers(p.mine) and p.part.covers(p.mine)
        else:
            assert p.mine is None
            assert part_row(p, now, 3, "x") == RegionRow(p.part, p.turn, None, 0, None), "outside the slice: placed only"
    assert any(p.mine is not None for p in plans)


def test_each_key_goes_to_its_k_closest_servers() -> None:
    rng = random.Random(6)
    region = Prefix.parse("10")
    server_keys = sorted(region.first | rng.getrandbits(BITS - 2) for _ in range(60))
    keys = sorted(region.first | rng.getrandbits(BITS - 2) for _ in range(500))
    allocation = allocate(keys, server_keys, K)
    for i, key in enumerate(keys):
        given = {server_keys[s] for s, runs in allocation.items() for a, b in runs if a <= i < b}
        assert given == set(sorted(server_keys, key=lambda p: p ^ key)[:K])


def test_a_server_is_given_up_after_more_than_two_failures_in_a_row() -> None:
    s = PeerSending(CONFIG)
    assert not s.failed() and not s.failed()
    s.delivered()  # a success resets the streak
    assert not s.failed() and not s.failed()
    assert s.failed(), "the third failure in a row"
    assert s.sent == 6 and s.some_delivered


def test_a_request_confirms_every_confirm_every_records_and_the_last_ones() -> None:
    s = PeerSending(SweepConfig(confirm_every=3))
    s.delivered()
    s.delivered()
    assert not s.confirm_due
    s.delivered()
    assert s.confirm_due
    s.confirmed()
    assert not s.confirm_due and not s.needs_final_confirm, "all confirmed: no final confirmation"
    s.delivered()
    assert s.needs_final_confirm
    nothing = PeerSending(CONFIG)
    nothing.failed()
    assert not nothing.some_delivered and not nothing.needs_final_confirm, "nothing went through: not reached"


def test_a_region_is_provided_when_a_fifth_of_its_servers_took_their_records() -> None:
    assert reached_enough(4, 20, CONFIG) and not reached_enough(3, 20, CONFIG)
    assert not reached_enough(0, 0, CONFIG), "no servers: never provided"


def test_failed_keys_back_off_doubling_to_a_ceiling() -> None:
    now = 1_000.0
    waits = [backoff(prior, now, CONFIG) for prior in range(6)]
    assert [a for a, _ in waits] == [1, 2, 3, 4, 5, 6]
    assert [at - now for _, at in waits] == [300, 600, 1200, 2400, 3600, 3600]


def test_an_attempt_is_provided_unconfirmed_or_unsent() -> None:
    assert Delivery(confirmed=4, delivered=20).outcome(20, CONFIG) is Outcome.PROVIDED
    assert Delivery(confirmed=3, delivered=20).outcome(20, CONFIG) is Outcome.UNCONFIRMED, "sent, not unsent"
    assert Delivery(confirmed=0, delivered=1).outcome(20, CONFIG) is Outcome.UNCONFIRMED, "one server took records"
    assert Delivery(confirmed=0, delivered=0).outcome(20, CONFIG) is Outcome.UNSENT


def test_unconfirmed_keys_go_out_at_most_max_sends_per_cycle_then_wait_for_their_turn() -> None:
    now, turn = 1_000.0, 50_000
    sends = 0
    prior = 0
    at = now
    # A network that never confirms: every send is unconfirmed. Within the cycle
    # (before the turn) the keys go out max_sends_per_cycle times, then at the turn.
    while at < turn:
        sends += 1
        later = retry(Outcome.UNCONFIRMED, prior, at, turn, CONFIG)
        prior, at = later.attempts, later.at
    assert sends == CONFIG.max_sends_per_cycle == 3 and later.deferred and at == turn
    # From then on, once per turn.
    again = retry(Outcome.UNCONFIRMED, prior, turn, turn + int(CONFIG.interval), CONFIG)
    assert again.deferred and again.at == turn + CONFIG.interval
    # Earlier unsent attempts count in the streak: the cycle's sends can only be fewer.
    assert retry(Outcome.UNCONFIRMED, 5, now, turn, CONFIG).deferred


def test_keys_that_reached_no_server_keep_backing_off() -> None:
    now, turn = 1_000.0, 50_000
    for prior in range(30):  # an offline node: retried within the hour, whatever the streak
        later = retry(Outcome.UNSENT, prior, now, turn, CONFIG)
        assert not later.deferred and later.at - now <= CONFIG.max_retry_after and later.attempts == prior + 1


def test_an_attempt_report_counts_each_outcome_apart() -> None:
    p = Prefix.parse("01")
    d = Delivery(confirmed=1, delivered=15, messages=300)
    later = retry(Outcome.UNCONFIRMED, 2, 0, 100, CONFIG)
    r = attempt_report(p, 10, 20, d, Outcome.UNCONFIRMED, later, "x")
    assert (r.provided, r.unconfirmed, r.deferred, r.failed) == (0, 10, 10, 0)
    assert (r.peers_reached, r.peers_unconfirmed, r.messages) == (1, 14, 300)
    r = attempt_report(p, 10, 20, Delivery(), Outcome.UNSENT, retry(Outcome.UNSENT, 0, 0, 100, CONFIG), "y")
    assert (r.provided, r.unconfirmed, r.deferred, r.failed) == (0, 0, 0, 10)
    r = attempt_report(p, 10, 20, Delivery(confirmed=20, delivered=20), Outcome.PROVIDED, None, None)
    assert (r.provided, r.unconfirmed, r.failed) == (10, 0, 0)


def test_a_turn_closer_than_the_grace_is_taken_now() -> None:
    turns = Turns(order=0, cycle_start=0, config=CONFIG)
    prefix = Prefix.parse("")  # its turn: every interval from cycle_start
    interval = CONFIG.interval
    assert turns.next(prefix, interval - CONFIG.grace / 2) == 2 * interval, "so close: provided now, next turn one later"
    assert turns.next(prefix, interval - 2 * CONFIG.grace) == interval


def test_regions_in_memory() -> None:
    rows = [RegionRow(Prefix.parse(p), 0, None, 0, None) for p in ("00", "011", "1")]
    found = region_of(rows, Prefix.parse("0111").first)
    assert found is not None and found.prefix == Prefix.parse("011")
    assert region_of(rows, Prefix.parse("010").first) is None
    kad = Prefix.parse("0100").first
    assert free_prefix(rows, kad, 1) == Prefix.parse("010"), "lengthened until it holds no region"
    assert free_prefix(rows, kad, 3) == Prefix.parse("010")
    new = [RegionRow(Prefix.parse("010"), 5, 1, 0, None), RegionRow(Prefix.parse("011"), 6, 1, 0, None)]
    after = replace_regions(rows, Prefix.parse("01"), new)
    assert [str(g.prefix) for g in after] == ["00*", "010*", "011*", "1*"]
    assert mean_prefix_len(after) == 2 and mean_prefix_len([]) is None


def test_a_slice_narrows_around_other_claims_and_big_regions() -> None:
    kad = Prefix.parse("0110").first
    region = Prefix.parse("0")
    assert narrower(region, kad, [Prefix.parse("00")]) == Prefix.parse("01")
    assert narrower(Prefix.parse("01"), kad, [Prefix.parse("00")]) is None
    assert too_big(region, CONFIG.claim_batch + 1, CONFIG) and not too_big(region, CONFIG.claim_batch, CONFIG)


def test_an_exploration_is_reused_within_the_grace_for_the_regions_slices() -> None:
    ex = Exploration(Prefix.parse("01"), CONFIG)
    ex.region = Prefix.parse("01")
    assert reusable((100.0, ex), Prefix.parse("011"), 100.0 + CONFIG.grace / 2, CONFIG) is ex
    assert reusable((100.0, ex), Prefix.parse("011"), 100.0 + CONFIG.grace, CONFIG) is None
    assert reusable((100.0, ex), Prefix.parse("1"), 100.0, CONFIG) is None
    assert reusable(None, Prefix.parse("01"), 100.0, CONFIG) is None


def test_reports_add_up_and_keep_the_later_error() -> None:
    a = VisitReport(prefix=Prefix.parse("0"), keys=3, provided=3, peers=20, peers_reached=20, messages=60)
    b = VisitReport(prefix=Prefix.parse("01"), keys=2, failed=2, peers=20, peers_reached=1, messages=40, error="late")
    total = combine(combine(VisitReport(prefix=Prefix.parse("0"), error="early"), a), b)
    assert total == VisitReport(
        prefix=Prefix.parse("0"), keys=5, provided=3, failed=2, peers=40, peers_reached=21, messages=100, error="late"
    )


def test_the_estimated_prefix_length_is_what_every_answer_shares() -> None:
    kad = Prefix.parse("1010").first
    answer = [Prefix.parse("10101").first, Prefix.parse("1011").first | 1]
    assert covered_prefix_len(kad, answer) == 3
    assert covered_prefix_len(kad, answer[:1]) == 0
