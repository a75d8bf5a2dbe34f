"""IP groups for the routing table's diversity filter (ipfs/specs kad-dht, go's
``peerdiversity``): IPv4 grouped by /16, IPv6 by /32; at most
``amino.MAX_PEERS_PER_IP_GROUP`` (3) peers of a group in the table and
``MAX_PEERS_PER_IP_GROUP_PER_CPL`` (2) in one bucket, as go-libp2p-kad-dht's
rtPeerIPGroupFilter. The address grouped is the connection's remote address when
there is one. Loopback is not exempt: a test on one machine sees what a public server
sees of many peers behind one IP.

Go groups IPv6 by the announcing ASN; without an ASN database a /32 (the usual size
of one provider's allocation) is the closest stand-in we can compute offline.
"""

from __future__ import annotations

from .. import varint

_IP4 = 0x04
_IP6 = 0x29


def ip_groups(addrs: tuple[bytes, ...], v4_bytes: int = 2, v6_bytes: int = 4) -> frozenset[bytes]:
    """The groups of a peer's binary multiaddrs: the first ``v4_bytes`` of an IPv4
    address (default /16), the first ``v6_bytes`` of an IPv6 one (default /32); addresses
    that are not IP are ignored. (The full table also groups by /24, /48 and the whole
    address: ``subnet_groups``, ``address_groups``.)"""
    groups = set()
    for addr in addrs:
        try:
            code, pos = varint.decode_exact(addr)
        except varint.VarintError:
            continue
        if code == _IP4 and len(addr) >= pos + 4:
            groups.add(b"4" + addr[pos : pos + v4_bytes])
        elif code == _IP6 and len(addr) >= pos + 16:
            groups.add(b"6" + addr[pos : pos + v6_bytes])
    return frozenset(groups)


def subnet_groups(addrs: tuple[bytes, ...]) -> frozenset[bytes]:
    """IPv4 /24 and IPv6 /48 groups (py-libp2p's kad-dht diversity subnets)."""
    return ip_groups(addrs, 3, 6)


def address_groups(addrs: tuple[bytes, ...]) -> frozenset[bytes]:
    """The IP addresses themselves: one machine."""
    return ip_groups(addrs, 4, 16)
