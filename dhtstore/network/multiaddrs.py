"""Multiaddr helpers for the host: strict checks of binary multiaddrs from the wire,
TCP endpoints, and the ``/p2p/<id>`` suffix.

Parsing and printing use the ``multiaddr`` package. Its binary parser is lazy and
lenient (a truncated ``/ip4`` decodes to a wrong address), so ``is_valid`` first
walks the protocol codes and their sizes, then lets the package check the values.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable

from multiaddr import Multiaddr, protocols
from multiaddr.exceptions import Error as MultiaddrError

from .. import varint
from ..peerid import PeerId, PeerIdError

MAX_MULTIADDR_BYTES = 1024  # go-multiaddr refuses nothing smaller in practice
P2P_CODE = 421
VARIABLE_SIZE = -1


class MultiaddrFormatError(ValueError):
    """A multiaddr that does not parse or is not one the host can use."""


# Protocols for which any value of the right size is valid (addresses, ports, and
# the value-less ones): a multiaddr made only of these needs no value check.
_ANY_VALUE_CODES = frozenset({4, 6, 33, 41, 132, 273})


@functools.lru_cache(maxsize=256)
def _size_bits(code: int) -> int:
    size: int = protocols.protocol_with_code(code).size
    return size


def is_valid(data: bytes) -> bool:
    """True when ``data`` is a well-formed binary multiaddr of known protocols."""
    if not data or len(data) > MAX_MULTIADDR_BYTES:
        return False
    pos = 0
    check_values = False
    try:
        while pos < len(data):
            decoded = varint.decode(data, pos)
            if decoded is None:
                return False
            code, pos = decoded
            size = _size_bits(code)
            if size == VARIABLE_SIZE:
                decoded = varint.decode(data, pos)
                if decoded is None:
                    return False
                length, pos = decoded
            else:
                length = size // 8
            check_values = check_values or (size != 0 and code not in _ANY_VALUE_CODES)
            pos += length
        if pos != len(data):
            return False
        if check_values:
            str(Multiaddr(data))  # the package checks each value against its codec
    except (MultiaddrError, ValueError, KeyError, IndexError, TypeError):
        return False
    return True


def parse(text_or_bytes: str | bytes) -> Multiaddr:
    """A Multiaddr from its text or binary form; MultiaddrFormatError if invalid."""
    if isinstance(text_or_bytes, bytes) and not is_valid(text_or_bytes):
        raise MultiaddrFormatError(f"invalid binary multiaddr {text_or_bytes[:64].hex()}")
    try:
        ma = Multiaddr(text_or_bytes)
        str(ma)
    except (MultiaddrError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise MultiaddrFormatError(f"invalid multiaddr {text_or_bytes!r}: {exc}") from None
    return ma


def split_peer_id(ma: Multiaddr) -> tuple[Multiaddr, PeerId | None]:
    """The transport part of ``ma`` and the peer id of a trailing ``/p2p/<id>``."""
    codes = [p.code for p in ma.protocols()]
    if not codes or codes[-1] != P2P_CODE:
        return ma, None
    try:
        peer = PeerId.from_string(ma.value_for_protocol(P2P_CODE))
    except PeerIdError as exc:
        raise MultiaddrFormatError(f"bad /p2p/ peer id in {ma}: {exc}") from None
    return ma.decapsulate_code(P2P_CODE), peer


def with_peer_id(ma: Multiaddr, peer: PeerId) -> Multiaddr:
    return ma.encapsulate(Multiaddr(f"/p2p/{peer}"))


def tcp_endpoint(ma: Multiaddr) -> tuple[str, int]:
    """(host, port) of ``/ip4|ip6/<host>/tcp/<port>``; MultiaddrFormatError otherwise."""
    parts = list(ma.items())
    if len(parts) != 2 or parts[0][0].name not in ("ip4", "ip6") or parts[1][0].name != "tcp":
        raise MultiaddrFormatError(f"not a /ip4|ip6/…/tcp/… address: {ma}")
    return str(parts[0][1]), int(parts[1][1])


def from_tcp_endpoint(host: str, port: int) -> Multiaddr:
    family = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
    return Multiaddr(f"/{family}/{host}/tcp/{port}")


def quic_endpoint(ma: Multiaddr) -> tuple[str, int]:
    """(host, port) of ``/ip4|ip6/<host>/udp/<port>/quic-v1``; MultiaddrFormatError otherwise."""
    parts = list(ma.items())
    if (
        len(parts) != 3
        or parts[0][0].name not in ("ip4", "ip6")
        or parts[1][0].name != "udp"
        or parts[2][0].name != "quic-v1"
    ):
        raise MultiaddrFormatError(f"not a /ip4|ip6/…/udp/…/quic-v1 address: {ma}")
    return str(parts[0][1]), int(parts[1][1])


def from_quic_endpoint(host: str, port: int) -> Multiaddr:
    family = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
    return Multiaddr(f"/{family}/{host}/udp/{port}/quic-v1")


def is_quic(ma: Multiaddr) -> bool:
    try:
        quic_endpoint(ma)
    except MultiaddrFormatError:
        return False
    return True


def endpoint(ma: Multiaddr) -> tuple[str, int]:
    """(host, port) of a TCP or QUIC address; MultiaddrFormatError for anything else."""
    return quic_endpoint(ma) if is_quic(ma) else tcp_endpoint(ma)


def is_loopback(ma: Multiaddr) -> bool:
    try:
        host, _ = endpoint(ma)
    except MultiaddrFormatError:
        return False
    return ipaddress.ip_address(host).is_loopback


def printable(addrs: Iterable[bytes]) -> list[str]:
    """The text form of each binary multiaddr that parses (the others are skipped)."""
    out = []
    for raw in addrs:
        try:
            out.append(str(parse(raw)))
        except MultiaddrFormatError:
            continue
    return out


_IP4_CODE, _IP6_CODE, _TCP_CODE = 4, 0x29, 6
_TCP_CODE_BYTES = varint.encode(_TCP_CODE)
_UDP_CODE_BYTES = varint.encode(0x0111)
_QUIC_V1_CODE_BYTES = varint.encode(0x01CD)


def leading_ip(addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a binary multiaddr starts with (``/ip4/…`` or ``/ip6/…``, whatever follows), else None."""
    code = addr[0] if addr else None  # both codes are one-byte varints
    size = 4 if code == _IP4_CODE else 16 if code == _IP6_CODE else 0
    if not size or len(addr) < 1 + size:
        return None
    raw = addr[1 : 1 + size]
    return ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)


def tcp_ip(addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a binary ``/ip4|ip6/<ip>/tcp/<port>`` or ``…/udp/<port>/quic-v1``
    (then an optional ``/p2p/<id>``), else None.

    Read straight from the bytes (no Multiaddr object): it runs for every address a
    peer claims, and a hostile identify claims hundreds."""
    ip = leading_ip(addr)
    if ip is None:
        return None
    start = 1 + len(ip.packed)
    if addr[start : start + 1] == _TCP_CODE_BYTES:
        end = start + 3  # the tcp code and its 2-byte port
    elif addr[start : start + 2] == _UDP_CODE_BYTES and addr[start + 4 : start + 6] == _QUIC_V1_CODE_BYTES:
        end = start + 6  # the udp code, its 2-byte port and quic-v1
    else:
        return None
    if len(addr) < end:
        return None
    if len(addr) > end:  # only a /p2p/<id> may follow
        try:
            decoded = varint.decode(addr, end)
            if decoded is None or decoded[0] != P2P_CODE:
                return None
            length = varint.decode(addr, decoded[1])
        except varint.VarintError:
            return None
        if length is None or length[1] + length[0] != len(addr):
            return None
    return ip


@functools.lru_cache(maxsize=65_536)  # ~1 µs saved per address a reply carries: the same ones recur
def is_public_addr(addr: bytes) -> bool:
    """True for an /ip4 or /ip6 TCP address that is globally routable."""
    ip = tcp_ip(addr)
    return ip is not None and ip.is_global


AddrRule = Callable[[Iterable[bytes]], tuple[bytes, ...]]
"""Which of a peer's addresses may be stored, served and dialled: ``public_only`` on
the public DHT, ``any_addr`` on the LAN DHT (go-libp2p-kad-dht dual's filters)."""


def public_only(addrs: Iterable[bytes]) -> tuple[bytes, ...]:
    """The public-DHT rule (go-libp2p-kad-dht's WAN address filter): only globally
    routable addresses are stored, served or dialled."""
    return tuple(a for a in addrs if is_public_addr(a))


def any_addr(addrs: Iterable[bytes]) -> tuple[bytes, ...]:
    """The LAN-DHT rule (and tests on loopback): every address is usable."""
    return tuple(addrs)


def for_remote(addrs: Iterable[bytes], remote: bytes | None) -> tuple[bytes, ...]:
    """The claimed ``addrs`` that make sense for a peer seen at ``remote`` (go-libp2p
    identify's filterAddrs): over loopback, all; from a private network, all but
    loopback; from a public address, only public ones. A peer on the Internet cannot
    make us hand out, or dial, our own LAN or loopback."""
    ip = leading_ip(remote) if remote is not None else None
    if ip is None or ip.is_loopback:
        return tuple(addrs)
    if not ip.is_global:
        return tuple(a for a in addrs if (b := leading_ip(a)) is None or not b.is_loopback)
    return public_only(addrs)


def same_ip(addrs: Iterable[bytes], remote: bytes | None) -> tuple[bytes, ...]:
    """The claimed ``addrs`` on the IP we are connected to the peer at: the ones its
    connection vouches for. A claim of another IP is unverified (it may be anyone's,
    a scan or reflection target), so it is not handed on."""
    ip = tcp_ip(remote) if remote is not None else None
    if ip is None:
        return ()
    return tuple(a for a in addrs if tcp_ip(a) == ip)
