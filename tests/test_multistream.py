"""multistream-select 1.0: dialer and listener driven against each other in memory."""

from __future__ import annotations

import pytest

from dhtstore import varint
from dhtstore.network.multistream import (
    MAX_MESSAGE_LENGTH,
    MAX_PROPOSALS,
    NEED_DATA,
    PROTOCOL_ID,
    MultistreamDialer,
    MultistreamError,
    MultistreamListener,
    NegotiationFailed,
    ProtocolAgreed,
    encode_message,
)
from dhtstore.network.sansio import NeedData

Event = ProtocolAgreed | NegotiationFailed | NeedData


def negotiate(dialer: MultistreamDialer, listener: MultistreamListener, chunk: int | None = None) -> tuple[Event, Event]:
    """Pump bytes both ways until both sides have finished; return their final events."""
    d_event: Event = NEED_DATA
    l_event: Event = NEED_DATA
    for _ in range(100):
        data = dialer.data_to_send()
        if data and not listener.finished:
            for i in range(0, len(data), chunk or len(data)):
                listener.receive_data(data[i : i + (chunk or len(data))])
                l_event = listener.next_event()
        data = listener.data_to_send()
        if data and not dialer.finished:
            for i in range(0, len(data), chunk or len(data)):
                dialer.receive_data(data[i : i + (chunk or len(data))])
                d_event = dialer.next_event()
        if dialer.finished and (listener.finished or isinstance(d_event, NegotiationFailed)):
            return d_event, l_event
    raise AssertionError("negotiation did not finish")


def test_wire_format_matches_spec() -> None:
    assert encode_message("na") == bytes.fromhex("036e610a")
    dialer = MultistreamDialer(["/noise"])
    assert dialer.data_to_send() == b"\x13/multistream/1.0.0\n\x07/noise\n"


def test_first_proposal_agreed() -> None:
    d, l = negotiate(MultistreamDialer(["/noise"]), MultistreamListener({"/noise"}))
    assert d == ProtocolAgreed("/noise") and l == ProtocolAgreed("/noise")


def test_na_moves_to_next_proposal_like_kubo_tls_then_noise() -> None:
    dialer = MultistreamDialer(["/tls/1.0.0", "/noise"])
    listener = MultistreamListener(lambda p: p == "/noise")
    d, l = negotiate(dialer, listener)
    assert d == ProtocolAgreed("/noise") and l == ProtocolAgreed("/noise")


def test_several_refusals_then_agreement_byte_by_byte() -> None:
    protocols = [f"/x/{i}" for i in range(5)] + ["/yamux/1.0.0"]
    d, l = negotiate(MultistreamDialer(protocols), MultistreamListener({"/yamux/1.0.0"}), chunk=1)
    assert d == l == ProtocolAgreed("/yamux/1.0.0")


def test_no_protocol_in_common() -> None:
    d, l = negotiate(MultistreamDialer(["/a", "/b"]), MultistreamListener({"/c"}))
    assert isinstance(d, NegotiationFailed) and "/a" in d.reason
    assert l is NEED_DATA


def test_optimistic_data_after_proposal_is_leftover_for_listener() -> None:
    dialer = MultistreamDialer(["/ipfs/ping/1.0.0"])
    listener = MultistreamListener({"/ipfs/ping/1.0.0"})
    listener.receive_data(dialer.data_to_send() + b"PING-BYTES")
    assert listener.next_event() == ProtocolAgreed("/ipfs/ping/1.0.0", b"PING-BYTES")
    dialer.receive_data(listener.data_to_send() + b"PONG")
    assert dialer.next_event() == ProtocolAgreed("/ipfs/ping/1.0.0", b"PONG")
    # The final event is sticky; the bytes after it belong to the protocol.
    assert dialer.next_event() == ProtocolAgreed("/ipfs/ping/1.0.0", b"PONG")
    with pytest.raises(MultistreamError):
        dialer.receive_data(b"more")


def test_ls_and_na_are_answered_na() -> None:
    listener = MultistreamListener({"/p"})
    listener.data_to_send()
    listener.receive_data(encode_message(PROTOCOL_ID) + encode_message("ls") + encode_message("na"))
    assert listener.next_event() is NEED_DATA
    assert listener.data_to_send() == encode_message("na") * 2


def test_incomplete_message_needs_data() -> None:
    listener = MultistreamListener({"/p"})
    listener.receive_data(encode_message(PROTOCOL_ID)[:-3])
    assert listener.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "payload",
    [
        encode_message("/not-multistream/1.0.0"),  # wrong header
        varint.encode(MAX_MESSAGE_LENGTH + 1),  # too long, refused from the varint alone
        b"\xff" * 10,  # varint too long
        b"\x80\x00",  # non-minimal varint
        b"\x00",  # empty message
        b"\x03abc",  # no newline
        b"\x03\xff\xfe\n",  # not UTF-8
    ],
)
def test_malformed_input_is_refused(payload: bytes) -> None:
    listener = MultistreamListener({"/p"})
    listener.receive_data(payload)
    with pytest.raises(MultistreamError):
        listener.next_event()


def test_dialer_refuses_an_answer_that_is_not_echo_or_na() -> None:
    dialer = MultistreamDialer(["/p"])
    dialer.receive_data(encode_message(PROTOCOL_ID) + encode_message("/q"))
    with pytest.raises(MultistreamError):
        dialer.next_event()


def test_listener_bounds_the_number_of_proposals() -> None:
    listener = MultistreamListener(set())
    listener.receive_data(encode_message(PROTOCOL_ID))
    for i in range(MAX_PROPOSALS):
        listener.receive_data(encode_message(f"/p/{i}"))
    assert listener.next_event() is NEED_DATA
    listener.receive_data(encode_message("/one-too-many"))
    with pytest.raises(MultistreamError):
        listener.next_event()


def test_dialer_refuses_invalid_protocol_ids() -> None:
    with pytest.raises(ValueError):
        MultistreamDialer([])
    with pytest.raises(ValueError):
        MultistreamDialer(["/a\n"])
    with pytest.raises(ValueError):
        MultistreamDialer(["/" + "a" * MAX_MESSAGE_LENGTH])


def test_error_is_sticky() -> None:
    listener = MultistreamListener({"/p"})
    listener.receive_data(b"\x00" + encode_message(PROTOCOL_ID))
    with pytest.raises(MultistreamError) as first:
        listener.next_event()
    with pytest.raises(MultistreamError) as again:
        listener.next_event()
    assert again.value is first.value
