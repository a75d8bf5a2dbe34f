"""The Delegated Routing V1 HTTP API over real HTTP on loopback, served by a node with a
SQLite store (``b``) beside a second node (``a``, in-memory) that the lookups reach.

Every answer the spec and boxo's server define is exercised: store hits and network
answers, JSON and NDJSON, 404 with an empty list, 400 for malformed input, 406 for the
IPNS content types, 413, 422, 429, 501, 503 and the CORS headers.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client import generate_latest

from dhtstore import multihash
from dhtstore.crypto.keys import PrivateKey
from dhtstore.errors import StoreUnavailable
from dhtstore.httpapi.api import HttpLimits
from dhtstore.httpapi.limits import LookupSlots, RateLimiter
from dhtstore.httpapi.server import RoutingApi
from dhtstore.network import multiaddrs
from dhtstore.node import Node
from dhtstore.peerid import PeerId
from dhtstore.records import ipns
from dhtstore.types import PeerInfo, Record

pytestmark = pytest.mark.anyio

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
OTHER_CID = "bafkreidon73zkcrwdb5iafqtijxildoonbwnpv7dyd6ef3qdgads2jc4su"
ADDR = multiaddrs.parse("/ip4/192.0.2.7/tcp/4001").to_bytes()


@dataclass
class Net:
    a: Node
    b: Node
    api: RoutingApi
    url: str
    http: aiohttp.ClientSession

    async def get(self, path: str, **headers: str) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.http.get(self.url + path, headers=headers) as response:
            return response, await response.read()


@asynccontextmanager
async def serve(api: RoutingApi) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with api.serve("127.0.0.1", 0) as (host, port), aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        yield f"http://{host}:{port}", http


@pytest.fixture(params=[False])
async def net(request: pytest.FixtureRequest, loopback_options: Callable[..., Any], sqlite_store_url: str) -> AsyncIterator[Net]:
    """Node b serves the API; its reprovider runs only where a test asks (indirect param)."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node.start(loopback_options(None)))
        b = await stack.enter_async_context(Node.start(loopback_options(sqlite_store_url, [a.addresses()[0]], reprovide=request.param)))
        with anyio.fail_after(10):
            await b.upkeep.bootstrapped.wait()
            while a.peer_id not in b.table:
                await anyio.sleep(0.05)
        api = b.routing_api()
        url, http = await stack.enter_async_context(serve(api))
        yield Net(a, b, api, url, http)


def ipns_record(key: PrivateKey, value: bytes = b"/ipfs/" + CID.encode(), *, hours: float = 1, ttl_s: int = 120) -> bytes:
    eol = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=hours)
    return ipns.create(key, value, 1, eol, datetime.timedelta(seconds=ttl_s))


# -- providers -------------------------------------------------------------------------


async def test_providers_from_the_store_as_json(net: Net) -> None:
    provider = PrivateKey.generate().peer_id()
    await net.b.providers.add_provider(multihash.from_cid(CID), provider, (ADDR,))
    response, body = await net.get(f"/routing/v1/providers/{CID}")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert json.loads(body) == {"Providers": [{"Schema": "peer", "ID": str(provider), "Addrs": ["/ip4/192.0.2.7/tcp/4001"], "Protocols": []}]}
    assert response.headers["Cache-Control"] == "public, max-age=300, stale-while-revalidate=172800, stale-if-error=172800"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Vary"] == "Accept"
    assert "Last-Modified" in response.headers
    assert net.api.requests()[("providers", "ok_store")] == 1


@pytest.mark.parametrize("net", [True], indirect=True)
async def test_providers_of_our_own_provide_list(net: Net) -> None:
    await net.b.start_provide([CID])
    response, body = await net.get(f"/routing/v1/providers/{CID}")
    assert response.status == 200
    assert [p["ID"] for p in json.loads(body)["Providers"]] == [str(net.b.peer_id)]


async def test_providers_from_the_network_as_ndjson(net: Net) -> None:
    provider = PrivateKey.generate().peer_id()
    await net.a.providers.add_provider(multihash.from_cid(CID), provider, (ADDR,))  # only a knows
    response, body = await net.get(f"/routing/v1/providers/{CID}", Accept="application/x-ndjson")
    assert response.status == 200
    assert response.content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert [(p["Schema"], p["ID"]) for p in lines] == [("peer", str(provider))]
    assert net.api.requests()[("providers", "ok_network")] == 1


async def test_no_providers_is_a_404_with_an_empty_list_cached_briefly(net: Net) -> None:
    response, body = await net.get(f"/routing/v1/providers/{CID}")
    assert response.status == 404
    assert json.loads(body) == {"Providers": []}
    assert response.headers["Cache-Control"].startswith("public, max-age=15,")
    response, body = await net.get(f"/routing/v1/providers/{CID}", Accept="application/x-ndjson")
    assert (response.status, body, response.content_type) == (404, b"", "application/x-ndjson")
    assert net.api.requests()[("providers", "not_found")] == 2


async def test_malformed_cid_and_unsupported_accept_are_400(net: Net) -> None:
    response, body = await net.get("/routing/v1/providers/not-a-cid")
    assert response.status == 400 and body.startswith(b"unable to parse CID")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    response, body = await net.get(f"/routing/v1/providers/{CID}", Accept="text/html")
    assert response.status == 400 and b"no supported content type" in body
    assert net.api.requests()[("providers", "invalid")] == 2


async def test_address_and_protocol_filters(net: Net) -> None:
    provider = PrivateKey.generate().peer_id()
    udp = multiaddrs.parse("/ip4/192.0.2.8/udp/4001/quic-v1").to_bytes()
    await net.b.providers.add_provider(multihash.from_cid(CID), provider, (ADDR, udp))
    response, body = await net.get(f"/routing/v1/providers/{CID}?filter-addrs=tcp")
    assert json.loads(body)["Providers"][0]["Addrs"] == ["/ip4/192.0.2.7/tcp/4001"]
    response, body = await net.get(f"/routing/v1/providers/{CID}?filter-addrs=!tcp")
    assert json.loads(body)["Providers"][0]["Addrs"] == ["/ip4/192.0.2.8/udp/4001/quic-v1"]
    response, body = await net.get(f"/routing/v1/providers/{CID}?filter-addrs=webtransport")
    assert response.status == 404
    response, body = await net.get(f"/routing/v1/providers/{CID}?filter-protocols=unknown,transport-bitswap")
    assert response.status == 200  # no known protocols counts as "unknown"
    response, body = await net.get(f"/routing/v1/providers/{CID}?filter-protocols=transport-bitswap")
    assert response.status == 404
    response, body = await net.get(f"/routing/v1/providers/{CID}?filter-protocols={'x' * 64}")
    assert response.status == 422 and b"at most 63" in body


# -- peers -----------------------------------------------------------------------------


async def test_peers_ourselves_a_known_peer_and_a_lookup(net: Net) -> None:
    response, body = await net.get(f"/routing/v1/peers/{net.b.peer_id.to_cid_string()}")
    assert response.status == 200
    (me,) = json.loads(body)["Peers"]
    assert me["Schema"] == "peer" and me["ID"] == str(net.b.peer_id) and me["Addrs"] and me["Protocols"] == []
    response, body = await net.get(f"/routing/v1/peers/{net.a.peer_id}", Accept="application/x-ndjson")
    assert response.status == 200
    assert json.loads(body)["ID"] == str(net.a.peer_id)
    nobody = PrivateKey.generate().peer_id()
    response, body = await net.get(f"/routing/v1/peers/{nobody}")
    assert response.status == 404 and json.loads(body) == {"Peers": []}
    assert net.api.requests()[("peers", "not_found")] == 1


async def test_malformed_peer_id_is_400(net: Net) -> None:
    response, body = await net.get("/routing/v1/peers/12D3KooWnotapeer")
    assert response.status == 400 and body.startswith(b"unable to parse peer id")


# -- IPNS ------------------------------------------------------------------------------


async def test_ipns_put_then_get(net: Net) -> None:
    key = PrivateKey.generate()
    name = key.peer_id().to_cid_string()
    record = ipns_record(key, ttl_s=120)
    async with net.http.put(f"{net.url}/routing/v1/ipns/{name}", data=record, headers={"Content-Type": "application/vnd.ipfs.ipns-record"}) as r:
        assert r.status == 200
    assert (await net.a.values.get(ipns.routing_key(key.peer_id()))) is not None  # published to the DHT
    response, body = await net.get(f"/routing/v1/ipns/{name}", Accept="application/vnd.ipfs.ipns-record")
    assert response.status == 200 and body == record
    assert response.content_type == "application/vnd.ipfs.ipns-record"
    cache = response.headers["Cache-Control"]
    assert cache.startswith("public, max-age=120, stale-while-revalidate=")
    assert 3500 < int(cache.split("stale-while-revalidate=")[1].split(",")[0]) <= 3600
    assert response.headers["Etag"].startswith('"') and "Expires" in response.headers and response.headers["Vary"] == "Accept"
    response, body = await net.get(f"/routing/v1/ipns/{name}")  # no Accept: the record, as boxo does
    assert response.status == 200 and body == record


async def test_ipns_get_from_the_network(net: Net) -> None:
    key = PrivateKey.generate()
    record = ipns_record(key)
    await net.a.values.put(Record(ipns.routing_key(key.peer_id()), record))  # only a holds it
    response, body = await net.get(f"/routing/v1/ipns/{key.peer_id().to_cid_string()}", Accept="application/vnd.ipfs.ipns-record")
    assert response.status == 200 and body == record
    assert net.api.requests()[("ipns_get", "ok_network")] == 1


async def test_ipns_errors(net: Net) -> None:
    key = PrivateKey.generate()
    name = key.peer_id().to_cid_string()
    url = f"{net.url}/routing/v1/ipns/{name}"
    ipns_type = {"Content-Type": "application/vnd.ipfs.ipns-record"}
    response, body = await net.get(f"/routing/v1/ipns/{name}", Accept="application/vnd.ipfs.ipns-record")
    assert response.status == 404 and response.headers["Cache-Control"].startswith("public, max-age=60,")
    response, body = await net.get(f"/routing/v1/ipns/{name}", Accept="application/json")
    assert response.status == 406 and b"application/vnd.ipfs.ipns-record" in body
    response, body = await net.get("/routing/v1/ipns/bafy-not-a-name", Accept="application/vnd.ipfs.ipns-record")
    assert response.status == 400 and body.startswith(b"unable to parse IPNS name")
    async with net.http.put(url, data=ipns_record(key), headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 406
    async with net.http.put(url, data=b"\x00garbage", headers=ipns_type) as r:
        assert r.status == 400 and (await r.text()).startswith("provided record is invalid")
    other = ipns_record(PrivateKey.generate())  # signed by another key than the name's
    async with net.http.put(url, data=other, headers=ipns_type) as r:
        assert r.status == 400 and "provided record is invalid" in await r.text()
    expired = ipns_record(key, hours=-1)
    async with net.http.put(url, data=expired, headers=ipns_type) as r:
        assert r.status == 400 and "expired" in await r.text()
    async with net.http.put(url, data=b"x" * 20_000, headers=ipns_type) as r:
        assert r.status == 413
    assert await net.b.values.get(ipns.routing_key(key.peer_id())) is None  # nothing invalid stored
    counts = net.api.requests()
    assert counts[("ipns_put", "invalid")] == 3 and counts[("ipns_put", "too_large")] == 1
    assert counts[("ipns_put", "not_acceptable")] == 1 and counts[("ipns_get", "not_acceptable")] == 1


# -- paths, methods, CORS, limits ------------------------------------------------------


async def test_unknown_paths_unsupported_methods_and_preflight(net: Net) -> None:
    response, body = await net.get("/routing/v1/nothing/here")
    assert response.status == 400
    response, body = await net.get("/routing/v1/providers")  # a path for PUT only
    assert response.status == 501
    async with net.http.put(f"{net.url}/routing/v1/providers", json={"Providers": []}) as r:
        assert r.status == 501
    async with net.http.post(f"{net.url}/routing/v1/providers/{CID}") as r:
        assert r.status == 501
    async with net.http.options(f"{net.url}/routing/v1/ipns/x", headers={"Origin": "https://example.org", "Access-Control-Request-Method": "PUT"}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "PUT" in r.headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in r.headers["Access-Control-Allow-Headers"]


async def test_rate_limit_per_client_address(net: Net) -> None:
    api = RoutingApi(net.b, net.api.local, HttpLimits(rate=0.001, burst=2))
    async with serve(api) as (url, http):
        statuses = []
        for _ in range(3):
            async with http.get(f"{url}/routing/v1/providers/{CID}") as r:
                statuses.append((r.status, r.headers.get("Retry-After")))
    assert statuses == [(404, None), (404, None), (429, "1")]
    assert api.requests()[("providers", "rate_limited")] == 1


class Stalled:
    """A network whose lookups never end: the server's timeout must."""

    async def find_providers(self, cid: bytes, count: int) -> list[PeerInfo]:
        await asyncio.sleep(3600)
        return []

    async def find_peer(self, peer: PeerId) -> PeerInfo | None:
        await asyncio.sleep(3600)
        return None

    async def get_value(self, key: bytes, quorum: int = 0) -> Record | None:
        await asyncio.sleep(3600)
        return None

    async def put_value(self, key: bytes, value: bytes) -> int:
        raise StoreUnavailable("store down")


class DownStore:
    async def get_providers(self, key: bytes, limit: int | None = None) -> list[Any]:
        raise StoreUnavailable("store down")

    async def get(self, key: bytes) -> Record | None:
        raise StoreUnavailable("store down")


async def test_lookup_timeout_lookup_slots_and_store_outage(net: Net) -> None:
    local = replace(net.api.local, providers=DownStore(), values=DownStore())  # type: ignore[arg-type]  # only the read methods are used
    api = RoutingApi(Stalled(), local, HttpLimits(lookup_timeout=0.3, max_lookups=1))
    async with serve(api) as (url, http):
        async with http.get(f"{url}/routing/v1/providers/{CID}") as r:  # store down, lookup times out
            assert r.status == 404
        key = PrivateKey.generate()
        async with http.get(f"{url}/routing/v1/ipns/{key.peer_id().to_cid_string()}") as r:
            assert r.status == 404
        api.limits = replace(api.limits, lookup_timeout=5.0)
        slow = asyncio.ensure_future(http.get(f"{url}/routing/v1/providers/{OTHER_CID}"))
        with anyio.fail_after(5):
            while api.lookups_in_flight == 0:
                await anyio.sleep(0.01)
        async with http.get(f"{url}/routing/v1/peers/{PrivateKey.generate().peer_id()}") as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
        async with http.get(f"{url}/routing/v1/peers/{net.b.peer_id}") as r:  # needs no lookup
            assert r.status == 200
        slow.cancel()
        async with http.put(f"{url}/routing/v1/ipns/{key.peer_id().to_cid_string()}", data=ipns_record(key), headers={"Content-Type": "application/vnd.ipfs.ipns-record"}) as r:
            assert r.status in (503,)
    assert api.requests()[("peers", "busy")] == 1


def test_rate_limiter_refills_and_forgets_the_oldest_clients() -> None:
    limiter = RateLimiter(rate=2.0, burst=2, max_clients=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("a", 0.5) is True  # one token back after half a second
    assert limiter.allow("a", 0.5) is False
    limiter.allow("b", 0.5)
    limiter.allow("c", 0.5)  # "a" is forgotten: it comes back with a full bucket
    assert limiter.allow("a", 0.5) is True
    slots = LookupSlots(1)
    assert slots.acquire() and not slots.acquire()
    slots.release()
    assert slots.acquire()


async def test_counters_are_in_the_node_registry(net: Net) -> None:
    await net.get(f"/routing/v1/providers/{CID}")
    text = generate_latest(net.b.metrics.registry).decode()
    assert f'dhtstore_http_requests_total{{endpoint="providers",identity="default",outcome="not_found",peer_id="{net.b.peer_id}"}} 1.0' in text
    assert "dhtstore_http_lookups_in_flight{" in text

