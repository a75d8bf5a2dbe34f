"""Fuzz yamux: random bytes, random frame sequences and mutated real traffic raise only
YamuxError, and a connection's outbound bytes stay well-formed frames throughout."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtstore.network.yamux import (
    HEADER,
    NEED_DATA,
    StreamData,
    YamuxConnection,
    YamuxError,
)

FUZZ = settings(max_examples=300, deadline=None)

cuts = st.lists(st.integers(0, 100_000), max_size=8)
edits = st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=4)

frames = st.lists(
    st.builds(
        lambda version, frame_type, flags, stream_id, length, payload: HEADER.pack(
            version, frame_type, flags, stream_id, length if frame_type else len(payload)
        )
        + (payload if frame_type == 0 else b""),
        st.sampled_from([0, 0, 0, 0, 1]),
        st.integers(0, 4),
        st.integers(0, 15),
        st.integers(0, 8),
        st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 300_000)),
        st.binary(max_size=64),
    ),
    max_size=12,
)


def feed_hostile(conn: YamuxConnection, data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for start, end in zip(points, points[1:]):
            conn.receive_data(data[start:end])
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, StreamData):
                    conn.consume(event.stream_id, len(event.data))
            assert_well_formed(conn.data_to_send())
    except YamuxError:
        pass


def assert_well_formed(out: bytes) -> None:
    pos = 0
    while pos < len(out):
        version, frame_type, _, _, length = HEADER.unpack_from(out, pos)
        assert version == 0 and 0 <= frame_type <= 3
        pos += HEADER.size + (length if frame_type == 0 else 0)
    assert pos == len(out)


@FUZZ
@given(st.binary(max_size=2048), cuts)
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    feed_hostile(YamuxConnection(is_client=True), data, cuts)
    feed_hostile(YamuxConnection(is_client=False), data, cuts)


@FUZZ
@given(frames, cuts)
def test_random_frame_sequences(frame_list: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frame_list)
    feed_hostile(YamuxConnection(is_client=True), data, cuts)
    feed_hostile(YamuxConnection(is_client=False, max_streams=2, max_ack_backlog=1), data, cuts)


@settings(max_examples=200, deadline=None)
@given(frames, cuts)
def test_random_frames_against_streams_we_opened(frame_list: list[bytes], cuts: list[int]) -> None:
    client = YamuxConnection(is_client=True, max_ack_backlog=2)
    for _ in range(2):
        stream_id = client.open_stream()
        client.send_data(stream_id, b"z" * 300_000)  # cut short: waits for window updates
    client.data_to_send()
    feed_hostile(client, b"".join(frame_list), cuts)


def real_traffic() -> bytes:
    """What a client sends: streams opened, data, FIN, RST, ping, go-away."""
    client = YamuxConnection(is_client=True)
    a, b = client.open_stream(), client.open_stream()
    client.send_data(a, b"x" * 300)
    client.close_stream(a)
    client.send_data(b, b"y" * 70_000)
    client.reset_stream(b)
    client.ping()
    client.go_away()
    return client.data_to_send()


TRAFFIC = real_traffic()


@FUZZ
@given(edits, cuts, st.integers(0, len(TRAFFIC)))
def test_mutated_and_truncated_real_traffic(edits: list[tuple[int, int]], cuts: list[int], cut_at: int) -> None:
    out = bytearray(TRAFFIC[:cut_at])
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    feed_hostile(YamuxConnection(is_client=False), bytes(out), cuts)


@FUZZ
@given(cuts, st.integers(0, len(TRAFFIC)))
def test_truncated_real_traffic_never_fails(cuts: list[int], cut_at: int) -> None:
    server = YamuxConnection(is_client=False)
    data = TRAFFIC[:cut_at]
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:]):
        server.receive_data(data[start:end])
        while server.next_event() is not NEED_DATA:
            pass
