import pytest

from dhtstore.network.dnsaddr import MAX_RESULTS, resolve

pytestmark = pytest.mark.anyio

BOOT = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
OTHER = "QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa"

ZONE = {
    "_dnsaddr.bootstrap.libp2p.io": [
        f"dnsaddr=/dnsaddr/sv15.bootstrap.libp2p.io/p2p/{BOOT}",
        f"dnsaddr=/dnsaddr/ny5.bootstrap.libp2p.io/p2p/{OTHER}",
        "some unrelated text",
    ],
    "_dnsaddr.sv15.bootstrap.libp2p.io": [
        f"dnsaddr=/ip4/147.75.87.27/tcp/4001/p2p/{BOOT}",
        f"dnsaddr=/dns6/sv15.bootstrap.libp2p.io/tcp/4001/p2p/{BOOT}",
        "dnsaddr=/not/a multiaddr",
    ],
    "_dnsaddr.loop.example": ["dnsaddr=/dnsaddr/loop.example"],
}


async def txt(name: str) -> list[str]:
    return ZONE.get(name, [])


async def ip(host: str, version: int) -> list[str]:
    return {("sv15.bootstrap.libp2p.io", 6): ["2604:1380:4602:5c00::3"]}.get((host, version), [])


async def test_dnsaddr_is_resolved_recursively_for_the_wanted_peer() -> None:
    resolved = await resolve(f"/dnsaddr/bootstrap.libp2p.io/p2p/{BOOT}", txt=txt, ip=ip)
    assert resolved == [
        f"/ip4/147.75.87.27/tcp/4001/p2p/{BOOT}",
        f"/ip6/2604:1380:4602:5c00::3/tcp/4001/p2p/{BOOT}",
    ]


async def test_plain_addresses_pass_through_and_loops_are_bounded() -> None:
    assert await resolve("/ip4/127.0.0.1/tcp/1", txt=txt, ip=ip) == ["/ip4/127.0.0.1/tcp/1"]
    assert await resolve("/dnsaddr/loop.example", txt=txt, ip=ip) == []


async def test_results_are_capped() -> None:
    async def many(name: str) -> list[str]:
        return [f"dnsaddr=/ip4/10.0.0.{i}/tcp/1" for i in range(200)]

    assert len(await resolve("/dnsaddr/x.example", txt=many, ip=ip)) == MAX_RESULTS


async def test_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        await resolve("not a multiaddr", txt=txt, ip=ip)
