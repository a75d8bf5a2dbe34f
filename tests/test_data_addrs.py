"""The ``peers.addrs`` column format: uvarint-length-prefixed binary multiaddrs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dhtstore.data.addrs import pack_addrs, unpack_addrs


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=32))
def test_packed_addresses_round_trip(addrs: list[bytes]) -> None:
    assert unpack_addrs(pack_addrs(tuple(addrs))) == tuple(addrs)


def test_damaged_address_blob_keeps_what_came_before_the_damage() -> None:
    blob = pack_addrs((b"abc", b"defg"))
    assert unpack_addrs(blob[:-1]) == (b"abc",)
    assert unpack_addrs(b"\xff") == ()
