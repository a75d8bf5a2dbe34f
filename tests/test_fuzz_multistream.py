"""Fuzz multistream-select: random, truncated and mutated input raises only MultistreamError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtstore.network.multistream import (
    NEED_DATA,
    MultistreamDialer,
    MultistreamError,
    MultistreamListener,
    NegotiationFailed,
    ProtocolAgreed,
    encode_message,
)

FUZZ = settings(max_examples=300, deadline=None)

# What a listener would send a dialer proposing /a then /b, and a dialer to a listener.
LISTENER_SIDE = encode_message("/multistream/1.0.0") + encode_message("na") + encode_message("/b")
DIALER_SIDE = encode_message("/multistream/1.0.0") + encode_message("/x") + encode_message("/b") + b"early data"


def feed(machine: MultistreamDialer | MultistreamListener, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in pieces, draining events."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:]):
        machine.receive_data(data[start:end])
        event = machine.next_event()
        assert event is NEED_DATA or isinstance(event, (ProtocolAgreed, NegotiationFailed))
        machine.data_to_send()
        if machine.finished:
            return


def feed_hostile(machine: MultistreamDialer | MultistreamListener, data: bytes, cuts: list[int]) -> None:
    """Like feed, but MultistreamError, and nothing else, is an acceptable outcome."""
    try:
        feed(machine, data, cuts)
    except MultistreamError:
        pass


def mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)
cuts = st.lists(st.integers(0, 10_000), max_size=8)


@FUZZ
@given(st.binary(max_size=2048), cuts)
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    feed_hostile(MultistreamDialer(["/a", "/b"]), data, cuts)
    feed_hostile(MultistreamListener({"/b"}), data, cuts)


@FUZZ
@given(edits, cuts, st.integers(0, 200))
def test_mutated_and_truncated_transcripts(edits: list[tuple[int, int]], cuts: list[int], cut_at: int) -> None:
    feed_hostile(MultistreamDialer(["/a", "/b"]), mutate(LISTENER_SIDE, edits)[:cut_at], cuts)
    feed_hostile(MultistreamListener({"/b"}), mutate(DIALER_SIDE, edits)[:cut_at], cuts)


@FUZZ
@given(cuts, st.integers(0, 200))
def test_truncated_valid_input_only_needs_data(cuts: list[int], cut_at: int) -> None:
    dialer = MultistreamDialer(["/a", "/b"])
    data = LISTENER_SIDE[:cut_at]
    feed(dialer, data, cuts)  # must not raise at all
    if cut_at >= len(LISTENER_SIDE):
        assert dialer.next_event() == ProtocolAgreed("/b")
