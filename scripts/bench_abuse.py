#!/usr/bin/env python3
"""Honest load beside each network attack of issue 12, on loopback, in one run.

    python scripts/bench_abuse.py                   # 6 s per phase
    python scripts/bench_abuse.py --duration 10 --write   # and append the figures to BENCHMARKS.md

Three processes: the server (a server-mode ``Node``, production default limits, an
in-memory store, on 127.0.0.1), the honest load (this process: ``--clients`` hosts,
each listening on its own 127.0.0.x and so dialling from it, each sending in turn
FIND_NODE, GET_PROVIDERS and ADD_PROVIDER on one reused kad stream, one request in
flight per client) and the attacker (on 127.0.0.1). Each attack phase is measured
right after a baseline phase with no attack, so the ratios compare like with like:
honest requests/s, p99 latency of FIND_NODE and GET_PROVIDERS, and the server's peak
RSS sampled during the phase. The attacks:

- ``conns``: 512 connections with throwaway identities, each holding a ping stream
  (refused ones retried every second);
- ``silent``: 64 TCP sockets that never send a byte, re-opened every 2 s;
- ``frames``: 8 connections, each with 64 kad streams announcing a 4 MiB frame and
  sending all but its last byte (reset streams are opened again);
- ``keys``: Noise handshakes, 4 at a time, with an RSA-16384 identity key and a junk
  signature.

Checked: every honest request is answered in every phase (the run fails otherwise);
the issue's targets (honest p99 within 2x of its baseline, RSS under 300 MB) are
printed as met or not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import cast

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from dhtstore import varint  # noqa: E402
from dhtstore.amino import MAX_MESSAGE_SIZE, PROTOCOL_ID  # noqa: E402
from dhtstore.crypto.keys import PrivateKey  # noqa: E402
from dhtstore.errors import NetworkError  # noqa: E402
from dhtstore.network import multiaddrs, tcp  # noqa: E402
from dhtstore.network.connection import CONNECTION_ERRORS, upgrade  # noqa: E402
from dhtstore.network.host import Host  # noqa: E402
from dhtstore.network.kadmessenger import LibP2PKadMessenger  # noqa: E402
from dhtstore.node import Node, NodeOptions  # noqa: E402
from dhtstore.peerid import PeerId  # noqa: E402
from dhtstore.types import Message, MessageType, PeerInfo  # noqa: E402

ATTACKS = ("conns", "silent", "frames", "keys")


# -- the server ------------------------------------------------------------------


async def serve() -> None:
    options = NodeOptions(
        identity=PrivateKey.generate(), listen=["/ip4/127.0.0.1/tcp/0"], mode="server",
        allow_private_addrs=True, ip_diversity=False, reprovide=False,
    )  # fmt: skip
    async with Node.start(options) as node:
        addr = node.host.listen_addrs[0]
        print(json.dumps({"addr": addr.to_bytes().hex(), "peer": str(node.peer_id)}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


# -- the attacker ----------------------------------------------------------------


async def attack(name: str, target: PeerInfo) -> None:
    host, port = multiaddrs.tcp_endpoint(multiaddrs.parse(target.addrs[0]))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_until_stdin_closes, tg.cancel_scope)
        await ATTACK_LOOPS[name](target, host, port)


async def _until_stdin_closes(scope: anyio.CancelScope) -> None:
    await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
    scope.cancel()


async def _hold_connections(target: PeerInfo, host: str, port: int) -> None:
    async with AsyncExitStack() as stack:
        attackers = [await stack.enter_async_context(Host(PrivateKey.generate())) for _ in range(512)]
        held: list[object] = []

        async def one(attacker: Host) -> None:
            while True:
                if attacker.connection(target.peer_id) is None:
                    try:
                        held.append(await attacker.new_stream(target, ["/ipfs/ping/1.0.0"]))
                    except NetworkError:
                        pass
                await anyio.sleep(1.0)

        async with anyio.create_task_group() as tg:
            for attacker in attackers:
                tg.start_soon(one, attacker)


async def _silent_sockets(target: PeerInfo, host: str, port: int) -> None:
    while True:
        socks = []
        for _ in range(64):
            try:
                socks.append(await anyio.connect_tcp(host, port))
            except OSError:
                pass
        await anyio.sleep(2.0)
        for sock in socks:
            await sock.aclose()


async def _big_frames(target: PeerInfo, host: str, port: int) -> None:
    chunk = b"\x00" * 65536

    async def stream_loop(attacker: Host) -> None:
        while True:
            try:
                stream = await attacker.new_stream(target, [PROTOCOL_ID])
                await stream.send(varint.encode(MAX_MESSAGE_SIZE))
                for _ in range(MAX_MESSAGE_SIZE // len(chunk) - 1):
                    await stream.send(chunk)
                await stream.send(chunk[:-1])
                await anyio.sleep_forever()  # hold it: the last byte never comes
            except (NetworkError, *CONNECTION_ERRORS):
                await anyio.sleep(0.2)

    async with AsyncExitStack() as stack:
        attackers = [await stack.enter_async_context(Host(PrivateKey.generate())) for _ in range(8)]
        async with anyio.create_task_group() as tg:
            for attacker in attackers:
                for _ in range(64):
                    tg.start_soon(stream_loop, attacker)


class _ForgedIdentity:
    """Stands in for a PrivateKey in the Noise handshake: any key, a junk signature."""

    def __init__(self, key_protobuf: bytes):
        self._key_protobuf = key_protobuf

    def public_key(self) -> _ForgedIdentity:
        return self

    def to_protobuf(self) -> bytes:
        return self._key_protobuf

    def sign(self, message: bytes) -> bytes:
        return b"\x01" * 2048


async def _forged_keys(target: PeerInfo, host: str, port: int) -> None:
    modulus = secrets.randbits(16384) | (1 << 16383) | 1
    der = rsa.RSAPublicNumbers(65537, modulus).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    identity = cast(PrivateKey, _ForgedIdentity(b"\x08\x00\x12" + varint.encode(len(der)) + der))

    async def one() -> None:
        while True:
            try:
                sock = await tcp.connect(host, port)
            except OSError:
                await anyio.sleep(0.1)
                continue
            try:
                with anyio.move_on_after(5):
                    await upgrade(sock, identity, True, target.peer_id)
                    await sock.receive()
            except CONNECTION_ERRORS:
                pass
            finally:
                await sock.aclose()

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)


ATTACK_LOOPS: dict[str, Callable[[PeerInfo, str, int], Awaitable[None]]] = {
    "conns": _hold_connections,
    "silent": _silent_sockets,
    "frames": _big_frames,
    "keys": _forged_keys,
}


# -- the honest load and the phases ------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


async def honest_phase(clients: list[Host], target: PeerInfo, duration: float, server_pid: int) -> dict[str, float]:
    latencies: dict[str, list[float]] = {"FIND_NODE": [], "GET_PROVIDERS": []}
    done = 0
    peak_rss = 0.0
    deadline = time.monotonic() + duration

    async def client_loop(client: Host, index: int) -> None:
        nonlocal done
        messenger = LibP2PKadMessenger(client)
        me = PeerInfo(client.peer_id, tuple(client.advertised_addrs()))
        n = 0
        while time.monotonic() < deadline:
            n += 1
            key = b"\x12\x20" + hashlib.sha256(b"%d %d %f" % (index, n, deadline)).digest()
            for kind in ("FIND_NODE", "GET_PROVIDERS"):
                started = time.perf_counter()
                await messenger.request(target, Message(MessageType[kind], key=key))
                latencies[kind].append(time.perf_counter() - started)
            await messenger.send(target, Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(me,)))
            done += 3

    async def sample_rss() -> None:
        nonlocal peak_rss
        while time.monotonic() < deadline:
            peak_rss = max(peak_rss, rss_mb(server_pid))
            await anyio.sleep(0.2)

    cpu_before = cpu_seconds(server_pid)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sample_rss)
        for i, client in enumerate(clients):
            tg.start_soon(client_loop, client, i)
    return {
        "server_cpu_per_s": (cpu_seconds(server_pid) - cpu_before) / duration,
        "rps": done / duration,
        "p99_find_node_ms": p99(latencies["FIND_NODE"]) * 1000,
        "p99_get_providers_ms": p99(latencies["GET_PROVIDERS"]) * 1000,
        "rss_mb": peak_rss,
    }


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ
    )


async def run(duration: float, n_clients: int, attacks: list[str]) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    server = child("--serve")
    assert server.stdout is not None and server.stdin is not None
    info = json.loads(server.stdout.readline())
    addr = bytes.fromhex(info["addr"])
    target = PeerInfo(PeerId.from_string(info["peer"]), (addr,))
    results = []
    try:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Host(PrivateKey.generate(), [f"/ip4/127.0.0.{i + 2}/tcp/0"]))
                for i in range(n_clients)
            ]
            await honest_phase(clients, target, 1.0, server.pid)  # warm up: connections, streams
            for name in attacks:
                baseline = await honest_phase(clients, target, duration, server.pid)
                attacker = child("--attack", name, "--target", info["addr"], "--peer", info["peer"])
                try:
                    await anyio.sleep(2.0)  # let the attack build up
                    attacked = await honest_phase(clients, target, duration, server.pid)
                finally:
                    assert attacker.stdin is not None
                    attacker.stdin.close()
                    attacker.wait(30)
                assert server.poll() is None, f"the server died under {name}"
                results.append((name, baseline, attacked))
                print(f"{name}: {baseline} -> {attacked}", flush=True)
    finally:
        server.stdin.close()
        server.wait(30)
    return results


def report(results: list[tuple[str, dict[str, float], dict[str, float]]], command: str) -> str:
    lines = [
        f"`{command}`, {time.strftime('%Y-%m-%d')}, commit {_commit()}, load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "| attack | honest req/s (ratio to baseline) | p99 FIND_NODE ms (ratio) | p99 GET_PROVIDERS ms (ratio) | server RSS MB, peak | server CPU s/s (baseline) | targets met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, base, hit in results:
        fn, gp = hit["p99_find_node_ms"] / base["p99_find_node_ms"], hit["p99_get_providers_ms"] / base["p99_get_providers_ms"]
        met = fn <= 2 and gp <= 2 and hit["rss_mb"] <= 300
        lines.append(
            f"| {name} | {hit['rps']:.0f} of {base['rps']:.0f} ({hit['rps'] / base['rps']:.2f}) "
            f"| {hit['p99_find_node_ms']:.1f} of {base['p99_find_node_ms']:.1f} ({fn:.2f}) "
            f"| {hit['p99_get_providers_ms']:.1f} of {base['p99_get_providers_ms']:.1f} ({gp:.2f}) "
            f"| {hit['rss_mb']:.0f} (baseline {base['rss_mb']:.0f}) "
            f"| {hit['server_cpu_per_s']:.2f} ({base['server_cpu_per_s']:.2f}) | {'yes' if met else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md's section")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attack", choices=ATTACKS, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        anyio.run(serve)
        return
    if args.attack:
        anyio.run(attack, args.attack, PeerInfo(PeerId.from_string(args.peer), (bytes.fromhex(args.target),)))
        return
    results = anyio.run(run, args.duration, args.clients, args.attacks.split(","))
    command = "python scripts/bench_abuse.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    table = report(results, command.strip())
    print(table)
    if args.write:
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
