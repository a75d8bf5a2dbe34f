"""The binary format of the ``peers.addrs`` column (and ``routing_snapshot_peers.addrs``).

A peer's addresses are binary multiaddrs, each prefixed with its length as an unsigned
varint, concatenated into one blob. The addresses stay the bytes they are on the wire,
and a peer's whole list fits in one column: no join table, no conversion to text.
Decoding stops at the first damaged entry and keeps the ones before it. Routing-table
snapshots, the peer book and the provider store all read and write it through here.
"""

from __future__ import annotations

from multiaddr import Multiaddr
from multiaddr.exceptions import Error as MultiaddrError

from ..varint import VarintError, decode_exact, encode


def pack_addrs(addrs: tuple[bytes, ...]) -> bytes:
    """Addresses as stored in ``peers.addrs``: each prefixed with its uvarint length."""
    return b"".join(encode(len(a)) + a for a in addrs)


def unpack_addrs(blob: bytes) -> tuple[bytes, ...]:
    """Inverse of pack_addrs; a damaged blob yields the addresses before the damage."""
    out: list[bytes] = []
    pos = 0
    while pos < len(blob):
        try:
            length, pos = decode_exact(blob, pos)
        except VarintError:
            break
        if length == 0 or pos + length > len(blob):
            break
        out.append(blob[pos : pos + length])
        pos += length
    return tuple(out)


def addr_kinds(addrs: tuple[bytes, ...]) -> str:
    """The distinct shapes of ``addrs`` ("ip4/tcp", "ip6/udp/quic-v1"), one per line,
    without values or the ``/p2p`` suffix: ``network_peers.addr_kinds``, for the census."""
    kinds: dict[str, None] = {}
    for addr in addrs:
        try:
            names = [p.name for p in Multiaddr(addr).protocols()]
        except (MultiaddrError, ValueError, KeyError, TypeError, EOFError):  # the package's lenient parser
            continue  # not a multiaddr this package reads: it has no shape to count
        kinds.setdefault("/".join(n for n in names if n != "p2p"))
    return "\n".join(kinds)
