"""yamux: two connections (client and server) driven against each other in memory."""

from __future__ import annotations

import pytest

from dhtstore.network.yamux import (
    DEFAULT_WINDOW,
    HEADER,
    NEED_DATA,
    Event,
    Flag,
    FrameType,
    GoAwayCode,
    GoAwayReceived,
    PingReceived,
    PongReceived,
    StreamClosedError,
    StreamData,
    StreamEnded,
    StreamLimitError,
    StreamOpened,
    StreamReset,
    StreamWritable,
    YamuxConnection,
    YamuxError,
)


def drain(conn: YamuxConnection) -> list[Event]:
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def pump(a: YamuxConnection, b: YamuxConnection) -> tuple[list[Event], list[Event]]:
    """Deliver bytes both ways until both are quiet; return the events each side saw."""
    seen_a: list[Event] = []
    seen_b: list[Event] = []
    for _ in range(1000):
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return seen_a, seen_b
        b.receive_data(to_b)
        seen_b += drain(b)
        a.receive_data(to_a)
        seen_a += drain(a)
    raise AssertionError("connections never went quiet")


def frame(frame_type: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(0, frame_type, flags, stream_id, length) + payload


Pair = tuple[YamuxConnection, YamuxConnection]


@pytest.fixture
def pair() -> Pair:
    return YamuxConnection(is_client=True), YamuxConnection(is_client=False)


def test_open_stream_and_exchange_data_both_ways(pair: Pair) -> None:
    client, server = pair
    sid = client.open_stream()
    assert sid == 1 and client.open_stream() == 3
    assert client.send_data(sid, b"hello") == 5
    _, seen = pump(client, server)
    assert seen == [StreamOpened(1), StreamOpened(3), StreamData(1, b"hello")]
    assert server.open_stream() == 2  # server ids are even
    server.send_data(1, b"world")
    seen, _ = pump(client, server)
    assert StreamData(1, b"world") in seen and StreamOpened(2) in seen


def test_header_is_big_endian_and_syn_is_a_window_update(pair: Pair) -> None:
    client, _ = pair
    client.open_stream()
    assert client.data_to_send() == bytes([0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])


def test_fin_half_close_then_full_close(pair: Pair) -> None:
    client, server = pair
    sid = client.open_stream()
    client.send_data(sid, b"request")
    client.close_stream(sid)
    _, seen = pump(client, server)
    assert seen == [StreamOpened(sid), StreamData(sid, b"request"), StreamEnded(sid)]
    with pytest.raises(StreamClosedError):
        client.send_data(sid, b"more")
    server.send_data(sid, b"response")  # the other direction still works
    server.close_stream(sid)
    seen, _ = pump(client, server)
    assert seen == [StreamData(sid, b"response"), StreamEnded(sid)]
    assert sid not in client.stream_ids and sid not in server.stream_ids


def test_reset_stream(pair: Pair) -> None:
    client, server = pair
    sid = client.open_stream()
    pump(client, server)
    server.send_data(sid, b"in flight")
    client.reset_stream(sid)
    seen_client, seen_server = pump(client, server)
    assert seen_client == []  # data for the reset stream is dropped, not an error
    assert seen_server == [StreamReset(sid)]
    with pytest.raises(StreamClosedError):
        server.send_data(sid, b"x")
    client.reset_stream(sid)  # already gone: no-op


def test_one_mib_with_flow_control_and_back_pressure(pair: Pair) -> None:
    client, server = pair
    sid = client.open_stream()
    payload = bytes(range(256)) * 4096
    offset = client.send_data(sid, payload)
    assert offset == DEFAULT_WINDOW  # the window cuts the first send short
    received = bytearray()
    writable_events = 0
    for _ in range(100):
        server.receive_data(client.data_to_send())
        for event in drain(server):
            if isinstance(event, StreamData):
                received += event.data
                server.consume(sid, len(event.data))  # the application read it
        client.receive_data(server.data_to_send())
        for event in drain(client):
            if isinstance(event, StreamWritable):
                writable_events += 1
                offset += client.send_data(sid, payload[offset:])
        if len(received) == len(payload):
            break
    assert received == payload and offset == len(payload)
    assert writable_events >= 3


def test_receiver_that_does_not_read_stalls_the_sender(pair: Pair) -> None:
    client, server = pair
    sid = client.open_stream()
    assert client.send_data(sid, b"x" * (DEFAULT_WINDOW + 10)) == DEFAULT_WINDOW
    seen_client, seen_server = pump(client, server)
    assert sum(len(e.data) for e in seen_server if isinstance(e, StreamData)) == DEFAULT_WINDOW
    assert seen_client == []  # no window update without consume
    assert client.send_window(sid) == 0 and client.send_data(sid, b"y") == 0
    server.consume(sid, DEFAULT_WINDOW // 2 - 1)
    assert server.data_to_send() == b""  # less than half a window owed: no update yet
    server.consume(sid, 1)
    seen_client, _ = pump(client, server)
    assert seen_client == [StreamWritable(sid)] and client.send_window(sid) == DEFAULT_WINDOW // 2
    with pytest.raises(ValueError):
        server.consume(sid, DEFAULT_WINDOW)


def test_data_over_the_window_is_refused_before_buffering() -> None:
    server = YamuxConnection(is_client=False)
    server.receive_data(frame(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0))
    server.receive_data(frame(FrameType.DATA, 0, 1, DEFAULT_WINDOW + 1))  # header only
    assert drain_until_error(server) == [StreamOpened(1)]


def drain_until_error(conn: YamuxConnection) -> list[Event]:
    events: list[Event] = []
    with pytest.raises(YamuxError):
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
    return events


def test_larger_initial_window_is_announced_with_syn_and_ack() -> None:
    client, server = YamuxConnection(True, initial_window=1 << 20), YamuxConnection(False, initial_window=1 << 20)
    sid = client.open_stream()
    pump(client, server)
    assert client.send_window(sid) == server.send_window(sid) == 1 << 20
    assert client.send_data(sid, b"z" * (2 << 20)) == 1 << 20
    _, seen = pump(client, server)
    assert sum(len(e.data) for e in seen if isinstance(e, StreamData)) == 1 << 20


def test_ping_pong(pair: Pair) -> None:
    client, server = pair
    opaque = client.ping()
    seen_client, seen_server = pump(client, server)
    assert seen_server == [PingReceived(opaque)] and seen_client == [PongReceived(opaque)]
    client.receive_data(frame(FrameType.PING, Flag.ACK, 0, 999))  # unsolicited pong: ignored
    assert drain(client) == []


def test_go_away(pair: Pair) -> None:
    client, server = pair
    sid = client.open_stream()
    pump(client, server)
    server.go_away(GoAwayCode.NORMAL)
    seen_client, _ = pump(client, server)
    assert seen_client == [GoAwayReceived(0)]
    with pytest.raises(StreamLimitError):
        client.open_stream()
    client.send_data(sid, b"existing streams finish")  # still allowed
    _, seen_server = pump(client, server)
    assert seen_server == [StreamData(sid, b"existing streams finish")]
    # A stream opened anyway after the go-away is reset.
    server.receive_data(frame(FrameType.WINDOW_UPDATE, Flag.SYN, 5, 0))
    assert drain(server) == []
    assert server.data_to_send() == frame(FrameType.WINDOW_UPDATE, Flag.RST, 5, 0)


def test_ack_backlog_limits_unacknowledged_streams() -> None:
    client, server = YamuxConnection(True, max_ack_backlog=4), YamuxConnection(False)
    for _ in range(4):
        client.open_stream()
    with pytest.raises(StreamLimitError):
        client.open_stream()
    pump(client, server)  # the server ACKs
    client.open_stream()


def test_inbound_streams_over_the_limit_are_reset() -> None:
    client, server = YamuxConnection(True), YamuxConnection(False, max_streams=2)
    ids = [client.open_stream() for _ in range(3)]
    seen_client, seen_server = pump(client, server)
    assert seen_server == [StreamOpened(ids[0]), StreamOpened(ids[1])]
    assert seen_client == [StreamReset(ids[2])]


@pytest.mark.parametrize(
    "wire",
    [
        bytes([1]) + bytes(11),  # version 1
        frame(7, 0, 0, 0),  # unknown type
        frame(FrameType.DATA, 0, 3, 1, b"x"),  # stream never opened
        frame(FrameType.WINDOW_UPDATE, Flag.SYN, 2, 0),  # SYN with the server's parity, sent to the server
        frame(FrameType.DATA, 0, 0, 1, b"x"),  # data on the session id
        frame(FrameType.PING, Flag.SYN, 1, 0),  # ping on a stream
        frame(FrameType.PING, 0, 0, 0),  # ping with no flag
        frame(FrameType.GO_AWAY, 0, 1, 0),  # go-away on a stream
        frame(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0) * 2,  # SYN twice
        frame(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.FIN, 1, 0) + frame(FrameType.DATA, 0, 1, 1, b"x"),  # after FIN
        frame(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 2**32 - 1),  # window overflow
    ],
)
def test_protocol_violations(wire: bytes) -> None:
    server = YamuxConnection(is_client=False)
    server.receive_data(wire)
    drain_until_error(server)


def test_partial_frames_need_data() -> None:
    server = YamuxConnection(is_client=False)
    wire = frame(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0) + frame(FrameType.DATA, Flag.FIN, 1, 3, b"abc")
    events = []
    for byte in wire:
        server.receive_data(bytes([byte]))
        events += drain(server)
    assert events == [StreamOpened(1), StreamData(1, b"abc"), StreamEnded(1)]


def test_error_is_sticky() -> None:
    server = YamuxConnection(is_client=False)
    server.receive_data(bytes([1]) + bytes(11) + frame(FrameType.PING, Flag.SYN, 0, 1))
    with pytest.raises(YamuxError) as first:
        server.next_event()
    with pytest.raises(YamuxError) as again:
        server.next_event()
    assert again.value is first.value
    server.go_away(GoAwayCode.PROTOCOL_ERROR)
    assert server.data_to_send() == frame(FrameType.GO_AWAY, 0, 0, 1)
