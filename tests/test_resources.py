"""The resource manager (network.resources) on its own: scopes, limits, release."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dhtstore import config, varint
from dhtstore.crypto.keys import PrivateKey
from dhtstore.network.api import HostLimits
from dhtstore.network.kadcodec import FrameDecoder
from dhtstore.network.resources import (
    ResourceLimitExceeded,
    ResourceLimits,
    ResourceManager,
    ScopeLimits,
    ip_group,
)

PEER = PrivateKey.generate().peer_id()


def test_ip_groups_are_the_ipv4_address_and_the_ipv6_slash_64() -> None:
    assert ip_group("192.0.2.7") == "192.0.2.7"
    assert ip_group("2001:db8:1:2:aaaa::1") == ip_group("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert ip_group("2001:db8:1:3::1") != ip_group("2001:db8:1:2::1")
    assert ip_group("::ffff:192.0.2.7") == "192.0.2.7"


def test_inbound_connections_per_ip_and_handshakes_are_limited_and_given_back() -> None:
    manager = ResourceManager(ResourceLimits(ip=ScopeLimits(inbound_connections=3, handshakes=2)))
    first, second = manager.open_inbound("10.0.0.1"), manager.open_inbound("10.0.0.1")
    with pytest.raises(ResourceLimitExceeded, match="handshakes"):
        manager.open_inbound("10.0.0.1")  # two already in their handshake
    other_ip = manager.open_inbound("10.0.0.2")  # another IP has its own
    first.secured(PEER)
    third = manager.open_inbound("10.0.0.1")
    third.secured(PrivateKey.generate().peer_id())
    with pytest.raises(ResourceLimitExceeded, match="inbound_connections"):
        manager.open_inbound("10.0.0.1")
    assert manager.usage("ip", "10.0.0.1") == {"inbound_connections": 3, "connections": 3, "handshakes": 1}
    assert manager.stats["limit_ip_handshakes"] == 1 and manager.stats["limit_ip_inbound_connections"] == 1
    for scope in (first, second, third, other_ip, first):  # closing twice is harmless
        scope.close()
    assert manager.usage() == {} and manager.usage("ip", "10.0.0.1") == {} and manager.usage("peer", str(PEER)) == {}


def test_a_connection_is_counted_from_accept_so_the_cap_is_never_overshot() -> None:
    manager = ResourceManager(ResourceLimits(system=ScopeLimits(inbound_connections=4)))
    scopes = [manager.open_inbound(f"10.0.0.{i}") for i in range(4)]  # all still in their handshakes
    with pytest.raises(ResourceLimitExceeded):
        manager.open_inbound("10.0.0.9")
    for i, scope in enumerate(scopes):
        scope.secured(PrivateKey.generate().peer_id())
    assert manager.usage()["inbound_connections"] == 4


def test_connections_per_peer_are_limited() -> None:
    manager = ResourceManager(ResourceLimits(peer=ScopeLimits(connections=1)))
    manager.open_inbound("10.0.0.1").secured(PEER)
    late = manager.open_outbound()
    with pytest.raises(ResourceLimitExceeded, match="peer"):
        late.secured(PEER)
    late.close()
    assert manager.usage() == {"inbound_connections": 1, "connections": 1}


def test_streams_per_peer_and_protocol_are_limited_and_closing_a_connection_closes_its_streams() -> None:
    manager = ResourceManager(ResourceLimits(peer=ScopeLimits(inbound_streams=2), protocol=ScopeLimits(inbound_streams=1)))
    conn = manager.open_inbound("10.0.0.1")
    conn.secured(PEER)
    a, b = conn.open_stream(inbound=True), conn.open_stream(inbound=True)
    with pytest.raises(ResourceLimitExceeded, match="peer"):
        conn.open_stream(inbound=True)
    outbound = conn.open_stream(inbound=False)  # directions are counted apart
    a.set_protocol("/kad")
    with pytest.raises(ResourceLimitExceeded, match="protocol"):
        b.set_protocol("/kad")
    assert manager.usage("protocol", "/kad") == {"inbound_streams": 1, "streams": 1}
    a.reserve_memory(1000)
    conn.close()
    assert manager.usage() == {} and manager.usage("protocol", "/kad") == {}
    assert a.closed and b.closed and outbound.closed


def test_memory_is_reserved_on_every_scope_up_to_the_system_all_or_nothing() -> None:
    limits = ResourceLimits(
        system=ScopeLimits(memory=10_000), connection=ScopeLimits(memory=6_000), stream=ScopeLimits(memory=4_000)
    )
    manager = ResourceManager(limits)
    conns = []
    for i in range(2):
        conn = manager.open_inbound(f"10.0.0.{i}")
        conn.secured(PrivateKey.generate().peer_id())
        conns.append(conn)
    s1, s2, s3 = (conns[0].open_stream(True) for _ in range(3))
    s1.reserve_memory(4_000)
    with pytest.raises(ResourceLimitExceeded, match="stream"):
        s1.reserve_memory(1)
    s2.reserve_memory(2_000)
    with pytest.raises(ResourceLimitExceeded, match="connection"):
        s3.reserve_memory(1)
    other = conns[1].open_stream(True)
    other.reserve_memory(4_000)
    with pytest.raises(ResourceLimitExceeded, match="system"):
        conns[1].open_stream(True).reserve_memory(1)
    assert manager.usage()["memory"] == 10_000
    s1.release_memory(4_000)
    s2.close()
    assert manager.usage()["memory"] == 4_000 == other.memory


def test_a_frame_body_is_reserved_before_it_is_buffered_and_released_when_complete() -> None:
    manager = ResourceManager(ResourceLimits(stream=ScopeLimits(memory=100)))
    conn = manager.open_inbound("10.0.0.1")
    conn.secured(PEER)
    stream = conn.open_stream(True)
    decoder = FrameDecoder(memory=stream)
    decoder.receive_data(varint.encode(2) + b"\x08")  # a body of 2 bytes, 1 here
    assert decoder.next_message() is None and stream.memory == 2
    decoder.receive_data(b"\x00")
    assert decoder.next_message() is not None and stream.memory == 0
    big = FrameDecoder(memory=stream)
    big.receive_data(varint.encode(101))
    with pytest.raises(ResourceLimitExceeded):
        big.next_message()
    assert manager.usage().get("memory", 0) == 0


def test_limit_hits_are_logged_at_debug_with_an_info_summary_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dhtstore.network.resources")
    now = [1000.0]
    manager = ResourceManager(ResourceLimits(ip=ScopeLimits(handshakes=0)), clock=lambda: now[0])
    for step in range(200):
        now[0] += 1.0  # 200 hits over 200 s
        with pytest.raises(ResourceLimitExceeded):
            manager.open_inbound("10.0.0.1")
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debugs) == 200 and len(infos) == 3
    assert "limit_ip_handshakes=60" in infos[0].getMessage()


def test_limits_come_from_the_config_limits_table() -> None:
    limits = ResourceLimits.from_config({"ip": {"inbound_connections": 2}, "system": {"memory": 1 << 20}})
    assert limits.ip.inbound_connections == 2 and limits.ip.handshakes == ResourceLimits().ip.handshakes
    assert limits.system.memory == 1 << 20 and limits.peer == ResourceLimits().peer
    assert ResourceLimits.from_config(None) == ResourceLimits()
    for bad, message in (
        ({"galaxy": {}}, "no such scope"),
        ({"ip": {"sockets": 1}}, "no such limit"),
        ({"ip": {"handshakes": "4"}}, "integers"),
        ({"ip": 4}, "table"),
    ):
        with pytest.raises(ValueError, match=message):
            ResourceLimits.from_config(bad)


def test_config_toml_carries_the_limits_and_refuses_unknown_keys(tmp_path: Path) -> None:
    written = tmp_path / "config.toml"
    written.write_text(config.render(config.Config()))
    assert config.load(written).limits == HostLimits()  # the defaults, written out
    edited = config.render(config.Config()).replace("first_byte_timeout = 3.0", "first_byte_timeout = 1.5")
    written.write_text(edited.replace("[limits.ip]\ninbound_connections = 8", "[limits.ip]\ninbound_connections = 32"))
    loaded = config.load(written).limits
    assert loaded.first_byte_timeout == 1.5 and loaded.resources.ip.inbound_connections == 32
    assert loaded.resources.ip.handshakes == ResourceLimits().ip.handshakes
    for bad, message in (("[limits]\nhigh_waters = 3\n", "no such key"), ("[limits]\nlow_water = 1.5\n", "integer")):
        written.write_text(bad)
        with pytest.raises(config.ConfigError, match=message):
            config.load(written)
