"""A py-libp2p (PyPI ``libp2p``, trio) peer with its Kademlia DHT, driven over JSON lines.

Runs in its own virtualenv (``requirements.txt`` beside this file), never in dhtstore's:
libp2p pins its own protobuf, multiaddr and trio. tests/interop/pylibp2p_peer.py starts
it and speaks to it, as tests/interop/jspeer.py does with js/peer.mjs.

argv[1] is a JSON object of options:
  keyType    "ed25519", "secp256k1" or "rsa"
  security   list of "noise", "tls": the only security protocols this peer offers and accepts
  transport  "tcp" or "quic"
  clientMode true for a DHT client

On start it prints ``{"event": "ready", "peerId", "addrs", "protocols", "keyType"}``;
then each stdin line ``{"id", "cmd", ...}`` gets one reply ``{"id", "ok", "result"|"error"}``.
Closing stdin stops the peer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto import ed25519, rsa, secp256k1
from libp2p.custom_types import TProtocol
from libp2p.host.ping import PingService
from libp2p.identity.identify.identify import ID as IDENTIFY_ID
from libp2p.identity.identify.identify import parse_identify_response
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.tls.transport import PROTOCOL_ID as TLS_ID
from libp2p.security.tls.transport import TLSTransport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import read_length_prefixed_protobuf

KEY_PAIRS = {
    "ed25519": ed25519.create_new_key_pair,
    "secp256k1": secp256k1.create_new_key_pair,
    "rsa": rsa.create_new_key_pair,
}
LISTEN = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic": "/ip4/127.0.0.1/udp/0/quic-v1"}


def security_options(key_pair: Any, names: list[str]) -> dict[TProtocol, Any]:
    from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair

    options: dict[TProtocol, Any] = {}
    for name in names:
        if name == "noise":
            options[NOISE_ID] = NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)
        elif name == "tls":
            options[TLS_ID] = TLSTransport(key_pair)
        else:
            raise ValueError(f"unknown security {name}")
    return options


def peer_json(info: Any) -> dict[str, Any]:
    return {"peerId": info.peer_id.to_string(), "addrs": [str(a) for a in info.addrs]}


class Driver:
    def __init__(self, host: Any, dht: KadDHT, options: dict[str, Any]):
        self.host = host
        self.dht = dht
        self.options = options
        self.ping_service = PingService(host)

    async def cmd_info(self) -> dict[str, Any]:
        return {"peerId": self.host.get_id().to_string(), "addrs": [str(a) for a in self.host.get_addrs()]}

    async def cmd_dial(self, addr: str) -> dict[str, Any]:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600)
        await self.host.connect(info)
        return {"peerId": info.peer_id.to_string()}

    async def cmd_addToRoutingTable(self, peerId: str) -> bool:
        # py-libp2p's routing table takes a peer only once identify shows it serves kad.
        with trio.fail_after(10):
            while not await self.dht.add_peer(ID.from_base58(peerId)):
                await trio.sleep(0.05)
        return True

    async def cmd_routingTable(self) -> list[str]:
        return [p.to_string() for p in self.dht.routing_table.get_peer_ids()]

    async def cmd_identify(self, peerId: str) -> dict[str, Any]:
        """Run identify against the peer now and return what it said."""
        stream = await self.host.new_stream(ID.from_base58(peerId), [IDENTIFY_ID])
        try:
            with trio.fail_after(10):
                data = await read_length_prefixed_protobuf(stream, use_varint_format=True)
        finally:
            await stream.close()
        msg = parse_identify_response(data)
        return {
            "agentVersion": msg.agent_version,
            "protocolVersion": msg.protocol_version,
            "protocols": list(msg.protocols),
            "listenAddrs": [str(multiaddr.Multiaddr(a)) for a in msg.listen_addrs],
            "observedAddr": str(multiaddr.Multiaddr(msg.observed_addr)) if msg.observed_addr else None,
        }

    async def cmd_connections(self) -> list[dict[str, Any]]:
        result = []
        for peer, conns in self.host.get_network().get_connections_map().items():
            for conn in conns:
                result.append({"peerId": peer.to_string(), "security": security_of(conn)})
        return result

    async def cmd_ping(self, peerId: str) -> dict[str, Any]:
        rtts = await self.ping_service.ping(ID.from_base58(peerId), ping_amt=1)
        return {"rttUs": rtts[0]}

    async def cmd_findPeer(self, peerId: str) -> dict[str, Any] | None:
        info = await self.dht.find_peer(ID.from_base58(peerId))
        return peer_json(info) if info is not None else None

    async def cmd_getClosestPeers(self, key: str) -> list[str]:
        peers = await self.dht.peer_routing.find_closest_peers_network(bytes.fromhex(key))
        return [p.to_string() for p in peers]

    async def cmd_provide(self, cid: str) -> bool:
        return await self.dht.provide(cid)

    async def cmd_findProviders(self, cid: str) -> list[dict[str, Any]]:
        return [peer_json(p) for p in await self.dht.find_providers(cid)]

    async def cmd_hangUp(self, peerId: str) -> None:
        await self.host.disconnect(ID.from_base58(peerId))


def security_of(conn: Any) -> str | None:
    """The security protocol id of a swarm connection, when py-libp2p records it."""
    muxed = getattr(conn, "muxed_conn", None)
    secured = getattr(muxed, "secured_conn", None)
    if secured is None:
        return "quic" if type(muxed).__name__.startswith("QUIC") else None
    # Noise and TLS both give a SecureSession; its reader/writer tells them apart.
    name = type(getattr(secured, "conn", secured)).__name__.lower()
    return "tls" if "tls" in name else "noise" if "noise" in name else name


async def serve(driver: Driver, out: trio.MemorySendChannel[dict[str, Any]]) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    async with trio.open_nursery() as nursery:
        while chunk := await stdin.receive_some(65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    nursery.start_soon(run_command, driver, json.loads(line), out)
        nursery.cancel_scope.cancel()  # stdin closed: stop


async def run_command(driver: Driver, request: dict[str, Any], out: trio.MemorySendChannel[dict[str, Any]]) -> None:
    ident = request.pop("id")
    cmd = request.pop("cmd")
    try:
        handler = getattr(driver, f"cmd_{cmd}")
        result = await handler(**request)
        await out.send({"id": ident, "ok": True, "result": result})
    except Exception as exc:  # every failure goes back to the test, which decides
        logging.getLogger("peer").debug("command %s failed", cmd, exc_info=True)
        await out.send({"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]})


async def write_lines(receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
    async for msg in receive:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


async def main(options: dict[str, Any]) -> None:
    key_pair = KEY_PAIRS[options.get("keyType", "ed25519")]()
    transport = options.get("transport", "tcp")
    listen = [multiaddr.Multiaddr(LISTEN[transport])]
    host = new_host(
        key_pair=key_pair,
        sec_opt=security_options(key_pair, options.get("security", ["noise"])),
        listen_addrs=listen,
        enable_quic=transport == "quic",
    )
    send, receive = trio.open_memory_channel[dict[str, Any]](100)
    async with host.run(listen_addrs=listen), trio.open_nursery() as nursery:
        dht = KadDHT(host, DHTMode.CLIENT if options.get("clientMode") else DHTMode.SERVER)
        async with background_trio_service(dht):
            nursery.start_soon(write_lines, receive)
            me = host.get_id().to_string()
            await send.send(
                {
                    "event": "ready",
                    "peerId": me,
                    "addrs": [f"{a}/p2p/{me}" if "/p2p/" not in str(a) else str(a) for a in host.get_addrs()],
                    "protocols": [str(p) for p in host.get_mux().get_protocols() if p],
                    "keyType": key_pair.public_key.get_type().name,
                }
            )
            await serve(Driver(host, dht, options), send)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("PYLIBP2P_LOG", "WARNING"), stream=sys.stderr)
    trio.run(main, json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
