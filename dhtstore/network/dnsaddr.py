"""Resolve ``/dnsaddr``, ``/dns``, ``/dns4`` and ``/dns6`` multiaddrs into dialable ones.

The public Amino bootstrap peers are given as ``/dnsaddr/bootstrap.libp2p.io/p2p/…``:
their TXT records ``_dnsaddr.<host>`` hold ``dnsaddr=<multiaddr>`` entries, which may
be ``/dnsaddr`` again (libp2p multiaddr spec, "dnsaddr"). Entries for another peer id
are skipped. Recursion and result counts are bounded so a hostile zone cannot make a
node resolve forever. DNS goes through dnspython's asyncio resolver.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from multiaddr import Multiaddr

log = logging.getLogger(__name__)

MAX_DEPTH = 4
MAX_RESULTS = 32

TxtLookup = Callable[[str], Awaitable[list[str]]]
IpLookup = Callable[[str, int], Awaitable[list[str]]]  # (host, 4 or 6) -> addresses


async def _txt(name: str) -> list[str]:
    import dns.asyncresolver
    import dns.exception

    try:
        answer = await dns.asyncresolver.resolve(name, "TXT", lifetime=10)
    except dns.exception.DNSException as exc:
        log.info("TXT lookup of %s failed: %s", name, exc)
        return []
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


async def _ip(host: str, version: int) -> list[str]:
    import dns.asyncresolver
    import dns.exception

    try:
        answer = await dns.asyncresolver.resolve(host, "A" if version == 4 else "AAAA", lifetime=10)
    except dns.exception.DNSException as exc:
        log.info("lookup of %s failed: %s", host, exc)
        return []
    return [r.to_text() for r in answer]


def _split(text: str) -> tuple[str, str, str]:
    """``/proto/value/rest…`` → (proto, value, "/rest…")."""
    parts = text.split("/", 3)
    if len(parts) < 3 or parts[0]:
        raise ValueError(f"not a multiaddr: {text!r}")
    return parts[1], parts[2], "/" + parts[3] if len(parts) > 3 else ""


def _peer_id(text: str) -> str | None:
    parts = text.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in ("p2p", "ipfs"):
            return parts[i + 1]
    return None


async def resolve(addr: str, *, txt: TxtLookup = _txt, ip: IpLookup = _ip) -> list[str]:
    """Dialable multiaddrs for ``addr`` (returned unchanged when it needs no DNS)."""
    out: list[str] = []
    await _resolve(addr, _peer_id(addr), txt, ip, 0, out)
    return out


async def _resolve(addr: str, want: str | None, txt: TxtLookup, ip: IpLookup, depth: int, out: list[str]) -> None:
    if len(out) >= MAX_RESULTS or depth > MAX_DEPTH:
        return
    proto, host, rest = _split(addr)
    if proto == "dnsaddr":
        for record in await txt(f"_dnsaddr.{host}"):
            if not record.startswith("dnsaddr="):
                continue
            target = record[len("dnsaddr=") :]
            if want is not None and _peer_id(target) not in (want, None):
                continue
            try:
                await _resolve(target, want, txt, ip, depth + 1, out)
            except ValueError:
                continue
    elif proto in ("dns", "dns4", "dns6"):
        versions = {"dns": (4, 6), "dns4": (4,), "dns6": (6,)}[proto]
        for version in versions:
            for address in await ip(host, version):
                if len(out) < MAX_RESULTS:
                    out.append(f"/ip{version}/{address}{rest}")
    else:
        Multiaddr(addr)  # raises ValueError for text that is no multiaddr at all
        out.append(addr)
