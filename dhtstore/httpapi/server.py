"""The Delegated Routing V1 HTTP API on aiohttp, as ipfs/specs ``http-routing-v1.md``
and boxo's ``routing/http/server`` (the server behind ipfs/someguy) answer it.

    GET  /routing/v1/providers/{cid}     {"Providers": [peer, …]} or NDJSON, one peer a line
    GET  /routing/v1/peers/{peer-id}     {"Peers": [peer]} or NDJSON
    GET  /routing/v1/ipns/{name}         the record (application/vnd.ipfs.ipns-record)
    PUT  /routing/v1/ipns/{name}         validate, store, publish

A peer is ``{"Schema": "peer", "ID", "Addrs", "Protocols"}``. Answers come from the
node's stores first (its provider records and its own provide list, its address book,
its value records); only when they hold nothing does a DHT lookup run, bounded by
``HttpLimits.lookup_timeout`` and by ``max_lookups`` in flight. No result is a 404 with
an empty list (``{"Providers": []}``), cached briefly; results are cached 5 minutes and
may be served stale for 48 h, the provider records' lifetime (boxo's Cache-Control).
A malformed CID, peer id, name or record is a 400 with the reason as the body, a
filter the spec does not allow a 422, an unknown path a 400 and an unsupported method
501 (the spec's "Error Codes"); too many requests from one address a 429 with
Retry-After. Every answer carries the CORS headers that let any web page read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Any

from aiohttp import web

from .. import amino, multihash
from ..errors import NetworkError, StoreError
from ..network import multiaddrs
from ..peerid import PeerId, PeerIdError
from ..records import ipns
from ..records.api import RecordError
from ..routing.api import RoutingError
from ..types import PeerInfo, Record
from .api import HttpLimits, LocalRouting, NetworkRouting
from .limits import LookupSlots, RateLimiter

log = logging.getLogger(__name__)

JSON = "application/json"
NDJSON = "application/x-ndjson"
IPNS_RECORD = "application/vnd.ipfs.ipns-record"
OUTCOME = web.RequestKey("outcome", str)  # how a handler answered, for the counters
MAX_AGE_RESULTS = 300  # boxo: cache results 5 minutes
MAX_AGE_NO_RESULTS = 15  # and no results 15 s
MAX_STALE = 48 * 3600  # the Amino DHT's provider-record lifetime
IPNS_DEFAULT_MAX_AGE = 60  # the spec: max-age=60 without a TTL, and on a 404
SHUTDOWN_TIMEOUT = 5.0
MAX_FILTER_NAME = 63  # the spec: transfer protocol names are at most 63 characters
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, PUT, OPTIONS",
    "Access-Control-Expose-Headers": "Etag, Content-Disposition",
}


class _Refusal(Exception):
    """An answer decided before the handler's main work: status, message, outcome."""

    def __init__(self, status: int, message: str, outcome: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.outcome, self.headers = status, outcome, dict(headers or {})


class RoutingApi:
    """The application and its counters; ``serve`` runs it on the current event loop."""

    def __init__(self, network: NetworkRouting, local: LocalRouting, limits: HttpLimits | None = None):
        self.network, self.local, self.limits = network, local, limits or HttpLimits()
        self._rate = RateLimiter(self.limits.rate, self.limits.burst, self.limits.max_clients)
        self._slots = LookupSlots(self.limits.max_lookups)
        self._requests: Counter[tuple[str, str]] = Counter()
        self.app = web.Application(client_max_size=self.limits.max_body, middlewares=[self._middleware])
        self.app.router.add_get("/routing/v1/providers/{cid}", self._providers, allow_head=False)
        self.app.router.add_get("/routing/v1/peers/{peer}", self._peers, allow_head=False)
        self.app.router.add_get("/routing/v1/ipns/{name}", self._get_ipns, allow_head=False)
        self.app.router.add_put("/routing/v1/ipns/{name}", self._put_ipns)
        for path in ("/routing/v1/providers", "/routing/v1/peers"):  # announcements (the spec's PUT): not supported
            self.app.router.add_put(path, self._not_implemented)

    # -- counters (HttpCounters) -------------------------------------------------------

    def requests(self) -> Mapping[tuple[str, str], int]:
        return dict(self._requests)

    @property
    def lookups_in_flight(self) -> int:
        return self._slots.in_use

    # -- serving -----------------------------------------------------------------------

    @asynccontextmanager
    async def serve(self, host: str, port: int) -> AsyncIterator[tuple[str, int]]:
        """Listen on host:port (0: any free port) until the block ends; yields the bound address."""
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        # A stop waits at most SHUTDOWN_TIMEOUT for requests in progress (aiohttp's default: 60 s).
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            bound = sock.getsockname()
            yield str(bound[0]), int(bound[1])
        finally:
            await runner.cleanup()
            sock.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        endpoint = _endpoint(request)
        if request.method == "OPTIONS":  # CORS preflight
            self._requests[endpoint, "preflight"] += 1
            return web.Response(status=204, headers={**CORS, "Access-Control-Allow-Headers": "Accept, Content-Type", "Access-Control-Max-Age": "600"})
        try:
            if not self._rate.allow(request.remote or "", time.monotonic()):
                raise _Refusal(429, "too many requests from this address", "rate_limited", {"Retry-After": "1"})
            response = await handler(request)
            outcome = request.get(OUTCOME, "ok")
        except _Refusal as refusal:
            outcome = refusal.outcome
            response = web.Response(status=refusal.status, text=f"{refusal}\n", headers=refusal.headers)
        except web.HTTPRequestEntityTooLarge:
            outcome = "too_large"
            response = web.Response(status=413, text=f"request body over {self.limits.max_body} bytes\n")
            response.force_close()  # the rest of the body stays unread: end the connection
        except web.HTTPNotFound:  # no route: the spec wants 400 for an unknown path
            outcome = "unknown_path"
            response = web.Response(status=400, text=f"unknown path {request.path[:200]}")
        except web.HTTPMethodNotAllowed:
            outcome = "not_implemented"
            response = web.Response(status=501, text=f"{request.method} {request.path[:200]} is not implemented")
        self._requests[endpoint, outcome] += 1
        if not response.prepared:
            response.headers.update(CORS)
        return response

    # -- GET /routing/v1/providers/{cid} -----------------------------------------------

    async def _providers(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["cid"]
        try:
            key = multihash.check_key(multihash.from_cid(text))
        except multihash.MultihashError as exc:
            raise _Refusal(400, f"unable to parse CID: {exc}", "invalid") from None
        media = _response_type(request)
        addr_filter, protocol_filter = _filters(request)
        streaming = media == NDJSON
        # From the store: what JSON may hold (NDJSON: ten times that). From the network:
        # boxo's record limit for JSON (20, one bucket), 100 for a stream.
        stored = self.limits.json_limit * (10 if streaming else 1)
        peers, source = await self._providers_of(key, stored, 100 if streaming else amino.BUCKET_SIZE)
        records = _filtered((_peer_record(p) for p in peers), addr_filter, protocol_filter)
        return await _answer(request, media, "Providers", records, 0 if streaming else self.limits.json_limit, source)

    async def _providers_of(self, key: bytes, stored: int, lookup_count: int) -> tuple[list[PeerInfo], str]:
        found: list[PeerInfo] = []
        try:
            if await self.local.own_provides(key):
                found.append(self.local.self_info())
            found.extend(r.provider for r in await self.local.providers.get_providers(key, stored))
        except StoreError as exc:  # the network still answers
            log.debug("provider store unavailable for an HTTP lookup: %s", exc)
        if found:
            return _unique(found), "store"
        async with self._lookup():
            peers = await self._bounded(self.network.find_providers(key, lookup_count), [])
        return _unique(peers), "network"

    # -- GET /routing/v1/peers/{peer-id} -----------------------------------------------

    async def _peers(self, request: web.Request) -> web.StreamResponse:
        peer = _parse_peer_id(request.match_info["peer"])
        media = _response_type(request)
        addr_filter, protocol_filter = _filters(request)
        info, source = await self._peer_info(peer)
        records = _filtered([_peer_record(info)] if info is not None else [], addr_filter, protocol_filter)
        return await _answer(request, media, "Peers", records, self.limits.json_limit if media == JSON else 0, source)

    async def _peer_info(self, peer: PeerId) -> tuple[PeerInfo | None, str]:
        me = self.local.self_info()
        if peer == me.peer_id:
            return me, "store"
        addrs = self.local.peer_addrs(peer)
        if addrs:
            return PeerInfo(peer, addrs), "store"
        async with self._lookup():
            found = await self._bounded(self.network.find_peer(peer), None)
        return (found if found is not None and found.addrs else None), "network"

    # -- /routing/v1/ipns/{name} -------------------------------------------------------

    async def _get_ipns(self, request: web.Request) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        if accept and "*/*" not in accept and IPNS_RECORD not in accept:
            raise _Refusal(406, f"content type in 'Accept' header is not supported, retry with 'Accept: {IPNS_RECORD}'", "not_acceptable")
        name = _parse_ipns_name(request.match_info["name"])
        key = ipns.routing_key(name)
        record, source = await self._stored_record(key), "store"
        if record is None:
            async with self._lookup():
                record = await self._bounded(self.network.get_value(key), None)
            source = "network"
        if record is None or not self._valid(key, record.value):
            request[OUTCOME] = "not_found"
            return web.Response(status=404, text="no IPNS record found", headers=_cache_control(IPNS_DEFAULT_MAX_AGE, IPNS_DEFAULT_MAX_AGE))
        parsed = ipns.parse(record.value)
        remaining = max(0, (parsed.eol_ns() - ipns.now_ns()) // 1_000_000_000)
        ttl = parsed.ttl_ns // 1_000_000_000
        headers = {
            **_cache_control(ttl if ttl > 0 else IPNS_DEFAULT_MAX_AGE, remaining),
            "Expires": formatdate(parsed.eol_ns() / 1e9, usegmt=True),
            "Last-Modified": formatdate(usegmt=True),
            "Etag": '"' + hashlib.blake2b(record.value, digest_size=8).hexdigest() + '"',
            "Content-Type": IPNS_RECORD,
            "Content-Disposition": f'attachment; filename="{name.to_cid_string()}.ipns-record"',
            "Vary": "Accept",
        }
        request[OUTCOME] = f"ok_{source}"
        return web.Response(body=record.value, headers=headers)

    async def _stored_record(self, key: bytes) -> Record | None:
        try:
            return await self.local.values.get(key)
        except StoreError as exc:
            log.debug("value store unavailable for an HTTP lookup: %s", exc)
            return None

    def _valid(self, key: bytes, value: bytes) -> bool:
        """A stored record may have expired since it was stored: serve only valid ones."""
        try:
            self.local.validator.validate(key, value)
        except RecordError:
            return False
        return True

    async def _put_ipns(self, request: web.Request) -> web.StreamResponse:
        if IPNS_RECORD not in request.headers.get("Content-Type", ""):
            raise _Refusal(406, f"content type in 'Content-Type' header is missing or not supported, retry with 'Content-Type: {IPNS_RECORD}'", "not_acceptable")
        name = _parse_ipns_name(request.match_info["name"])
        value = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge
        key = ipns.routing_key(name)
        try:
            self.local.validator.validate(key, value)
        except RecordError as exc:
            raise _Refusal(400, f"provided record is invalid: {exc}", "invalid") from None
        async with self._lookup():
            try:
                peers = await self._bounded(self.network.put_value(key, value), 0)
            except StoreError as exc:
                raise _Refusal(503, f"record not stored: {exc}", "unavailable", {"Retry-After": "5"}) from None
        log.debug("HTTP IPNS PUT for %s reached %d peers", name, peers)
        return web.Response(status=200)

    async def _not_implemented(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, [])

    # -- shared --------------------------------------------------------------------------

    @asynccontextmanager
    async def _lookup(self) -> AsyncIterator[None]:
        if not self._slots.acquire():
            raise _Refusal(503, "too many lookups in progress", "busy", {"Retry-After": "1"})
        try:
            yield
        finally:
            self._slots.release()

    async def _bounded(self, lookup: Awaitable[Any], default: Any) -> Any:
        """The lookup's answer, or ``default`` when it outlives the timeout or finds no
        peers to ask (an empty routing table)."""
        try:
            async with asyncio.timeout(self.limits.lookup_timeout):
                return await lookup
        except TimeoutError:
            return default
        except (RoutingError, NetworkError) as exc:
            log.debug("HTTP-started lookup failed: %s", exc)
            return default


def _endpoint(request: web.Request) -> str:
    parts = request.path.split("/")
    if len(parts) in (4, 5) and parts[1:3] == ["routing", "v1"] and parts[3] in ("providers", "peers", "ipns"):
        return f"ipns_{request.method.lower()}" if parts[3] == "ipns" else parts[3]
    return "other"


def _response_type(request: web.Request) -> str:
    """NDJSON when the client accepts it, else JSON (boxo's ``detectResponseType``)."""
    accepts = [v.split(";")[0].strip() for h in request.headers.getall("Accept", []) for v in h.split(",")]
    if not accepts:
        return JSON
    if NDJSON in accepts:
        return NDJSON
    if JSON in accepts or "*/*" in accepts or "application/*" in accepts:
        return JSON
    raise _Refusal(400, f"no supported content type in 'Accept': use {JSON} or {NDJSON}", "invalid")


def _filters(request: web.Request) -> tuple[list[str], list[str]]:
    """``filter-addrs`` and ``filter-protocols`` (IPIP-484), lower-cased."""
    out = []
    for name in ("filter-addrs", "filter-protocols"):
        values = [v.strip().lower() for v in request.query.get(name, "").split(",") if v.strip()]
        if any(len(v.lstrip("!")) > MAX_FILTER_NAME for v in values):
            raise _Refusal(422, f"{name}: names are at most {MAX_FILTER_NAME} characters", "unprocessable")
        out.append(values)
    return out[0], out[1]


def _parse_peer_id(text: str) -> PeerId:
    """A peer id as base58 or a libp2p-key CID; a CID of another codec is taken for its
    multihash, as boxo does for clients that send one."""
    try:
        return PeerId.from_string(text)
    except PeerIdError as exc:
        try:
            return PeerId.from_bytes(multihash.from_cid(text))
        except (multihash.MultihashError, PeerIdError):
            raise _Refusal(400, f"unable to parse peer id {text[:100]!r}: {exc}", "invalid") from None


def _parse_ipns_name(text: str) -> PeerId:
    try:
        return PeerId.from_string(text)
    except PeerIdError as exc:
        raise _Refusal(400, f"unable to parse IPNS name {text[:100]!r}: {exc}", "invalid") from None


def _unique(peers: Iterable[PeerInfo]) -> list[PeerInfo]:
    seen: dict[PeerId, PeerInfo] = {}
    for peer in peers:
        if peer.peer_id not in seen or (peer.addrs and not seen[peer.peer_id].addrs):
            seen[peer.peer_id] = peer
    return list(seen.values())


def _peer_record(peer: PeerInfo) -> dict[str, Any]:
    return {"Schema": "peer", "ID": str(peer.peer_id), "Addrs": multiaddrs.printable(peer.addrs), "Protocols": []}


def _filtered(records: Iterable[dict[str, Any]], addr_filter: list[str], protocol_filter: list[str]) -> list[dict[str, Any]]:
    """IPIP-484: keep the addresses that pass ``filter-addrs`` and drop a peer left with
    none (``unknown`` keeps a peer with no known address); keep a peer that lists one of
    ``filter-protocols`` (``unknown``: one that lists none)."""
    out = []
    for record in records:
        if protocol_filter:
            protocols = [p.lower() for p in record["Protocols"]]
            if not (any(p in protocol_filter for p in protocols) or (not protocols and "unknown" in protocol_filter)):
                continue
        if addr_filter:
            if not record["Addrs"]:
                if "unknown" not in addr_filter:
                    continue
            else:
                record = {**record, "Addrs": [a for a in record["Addrs"] if _addr_passes(a, addr_filter)]}
                if not record["Addrs"]:
                    continue
        out.append(record)
    return out


def _addr_passes(addr: str, addr_filter: list[str]) -> bool:
    names = set(addr.lower().split("/")[1::2])  # /ip4/1.2.3.4/tcp/1 -> ip4, tcp (every other part)
    negative = [f[1:] for f in addr_filter if f.startswith("!")]
    positive = [f for f in addr_filter if not f.startswith("!") and f != "unknown"]
    if any(n in names for n in negative):
        return False
    return not positive or any(p in names for p in positive)


def _cache_control(max_age: int, stale: int) -> dict[str, str]:
    return {"Cache-Control": f"public, max-age={max_age}, stale-while-revalidate={stale}, stale-if-error={stale}"}


async def _answer(request: web.Request, media: str, field: str, records: list[dict[str, Any]], limit: int, source: str) -> web.StreamResponse:
    """200 with the records, or 404 with none; JSON holds at most ``limit`` (0: all)."""
    status = 200 if records else 404
    headers = {
        **_cache_control(MAX_AGE_RESULTS if records else MAX_AGE_NO_RESULTS, MAX_STALE),
        "Vary": "Accept",
        "Last-Modified": formatdate(usegmt=True),
    }
    request[OUTCOME] = f"ok_{source}" if records else "not_found"
    if media == JSON:
        body = json.dumps({field: records[:limit] if limit else records}, separators=(",", ":")) + "\n"  # as Go's json.Encoder
        return web.Response(status=status, text=body, content_type=JSON, headers=headers)
    response = web.StreamResponse(status=status, headers={**headers, **CORS, "Content-Type": NDJSON})
    await response.prepare(request)
    for record in records:
        await response.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    await response.write_eof()
    return response
