"""README "Scaling out", run as written: three ``dhtstore run --identity …`` processes
on one PostgreSQL store, beside js-libp2p peers on loopback. A provider record sent to
one head is returned by the other two, and the heads ride out the store going away.

The commands are read from the README's code block; only what must differ on a test
machine is substituted: the data directory and store URL (``$DATA``, ``$STORE``), free
loopback ports for ``/ip4/0.0.0.0/tcp/400N`` and the metrics ports, and a loopback
bootstrap peer with a 1 s status interval appended to each ``run``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import pytest
from cid import make_cid
from jspeer import start_js_peers
from sqlalchemy.engine import make_url

from dhtstore import multihash
from dhtstore.config import read_identity
from dhtstore.crypto.keys import PrivateKey
from dhtstore.network import multiaddrs
from dhtstore.node import Node, NodeOptions
from dhtstore.peerid import PeerId
from dhtstore.types import Message, MessageType, PeerInfo

pytestmark = [pytest.mark.anyio, pytest.mark.interop, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    section = README.read_text().split("\n## Scaling out\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README 'Scaling out' has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute(line: str, variables: dict[str, str], bootstrap: str) -> tuple[list[str], bool]:
    """The command line as argv for this machine, and whether it runs in the background."""
    words = shlex.split(line, comments=True)
    background = words[-1] == "&"
    words = words[:-1] if background else words
    out = []
    for word in words:
        for name, value in variables.items():
            word = word.replace(f"${name}", value)
        word = re.sub(r"^/ip4/0\.0\.0\.0/tcp/\d+$", lambda _: f"/ip4/127.0.0.1/tcp/{free_port()}", word)
        word = re.sub(r"^127\.0\.0\.1:\d+$", lambda _: f"127.0.0.1:{free_port()}", word)
        out.append(word)
    assert out[0] == "dhtstore", line
    argv = [sys.executable, "-m", "dhtstore", *out[1:]]
    if out[1] == "run":
        argv += ["--bootstrap", bootstrap, "--status-interval", "1"]
    return argv, background


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """An empty database, as the README's STORE expects."""
    u = make_url(pg_url)
    name = f"dhtstore_scale_{secrets.token_hex(5)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432, database=u.database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    anyio.run(admin, f'CREATE DATABASE "{name}"')
    try:
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        anyio.run(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sha256_mh(data: bytes) -> bytes:
    return multihash.Multihash(multihash.SHA2_256, hashlib.sha256(data).digest()).to_bytes()


def cid_of(mh: bytes) -> str:
    return make_cid(1, "raw", mh).encode("base32").decode()  # js decodes provider keys as CIDs


async def eventually(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not (result := await check()):
            await anyio.sleep(0.25)
    return result


async def wait_listening(port: int, proc: subprocess.Popen) -> None:
    with anyio.fail_after(60):
        while True:
            assert proc.poll() is None, "dhtstore run exited early"
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
                await stream.aclose()
                return
            except OSError:
                await anyio.sleep(0.2)


def test_readme_scaling_out_commands_work_as_written(js_harness: str, pg_database: str, tmp_path: Path) -> None:
    anyio.run(_scaling_out, js_harness, pg_database, tmp_path)


async def _scaling_out(js_harness: str, store: str, tmp_path: Path) -> None:
    data = tmp_path / "dht"
    lines = readme_commands()
    variables = {}
    for line in lines:  # NAME=value lines
        if (m := re.fullmatch(r"([A-Z]+)=(\S+)(\s+#.*)?", line)) is not None:
            variables[m.group(1)] = m.group(2)
    assert set(variables) == {"DATA", "STORE"}
    variables = {"DATA": str(data), "STORE": store}
    commands = [line for line in lines if line.startswith("dhtstore ")]

    heads: list[tuple[subprocess.Popen, list[str]]] = []
    async with AsyncExitStack() as stack:
        js = await stack.enter_async_context(start_js_peers(js_harness, 3))
        for peer in js[1:]:
            await peer.dial(js[0].addr)
        try:
            for line in commands:
                argv, background = substitute(line, variables, js[0].addr)
                if not background:
                    with anyio.fail_after(120):
                        done = await anyio.run_process(argv, check=False)
                    assert done.returncode == 0, f"{line}\n{done.stdout.decode()}{done.stderr.decode()}"
                    continue
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                heads.append((proc, argv))
            assert len(heads) == 3
            for proc, argv in heads:
                await wait_listening(int(option(argv, "--listen").rsplit("/", 1)[1]), proc)
            await _check_shared_providers(stack, js, data, heads, store)
        finally:
            outputs = []
            for proc, _ in heads:
                proc.send_signal(signal.SIGTERM)
            for proc, _ in heads:
                out, _ = proc.communicate(timeout=30)
                outputs.append(out)
        for i, ((proc, argv), out) in enumerate(zip(heads, outputs, strict=True)):
            name = option(argv, "--identity")
            assert proc.returncode == 0, out
            assert f"status: identity={name} store=up" in out, out
            if i > 0:  # head-2 and head-3 used the store during the outage (head-1 was idle)
                assert f"status: identity={name} store=down" in out, out
            assert "Traceback" not in out, out


async def _check_shared_providers(stack: AsyncExitStack, js, data: Path, heads, store: str) -> None:  # type: ignore[no-untyped-def]
    infos = []
    for _, argv in heads:
        peer = read_identity(data / "identities" / f"{option(argv, '--identity')}.key").peer_id()
        addr = multiaddrs.parse(option(argv, "--listen")).to_bytes()
        infos.append(PeerInfo(peer, (addr,)))

    client = await stack.enter_async_context(Node.start(NodeOptions(
        identity=PrivateKey.generate(), listen=["/ip4/127.0.0.1/tcp/0"], mode="client", allow_private_addrs=True,
        ip_diversity=False, reprovide=False,
    )))
    me = PeerInfo(client.peer_id, tuple(client.host.advertised_addrs()))

    async def providers_at(head: PeerInfo, mh: bytes) -> set[PeerId]:
        reply = await client.messenger.request(head, Message(MessageType.GET_PROVIDERS, key=mh))
        return {p.peer_id for p in reply.provider_peers}

    # A record sent to head-1 only is returned by head-2 and head-3.
    mh = sha256_mh(b"sent to one head")
    await client.messenger.send(infos[0], Message(MessageType.ADD_PROVIDER, key=mh, provider_peers=(me,)))
    await eventually(lambda: _contains(providers_at(infos[0], mh), client.peer_id))
    for head in infos[1:]:
        assert client.peer_id in await providers_at(head, mh)

    # js finds that provider through the heads.
    async def js_finds_it() -> bool:
        result = await js[1].find_providers(cid_of(mh))
        return str(client.peer_id) in {p["peerId"] for p in result["providers"]}

    await eventually(js_finds_it, timeout=60)

    # A js peer's provide reaches the heads, and each serves it.
    mh2 = sha256_mh(b"provided by js")
    await js[2].provide(cid_of(mh2))
    for head in infos:
        await eventually(lambda head=head: _contains(providers_at(head, mh2), js[2].peer_id))

    # The store goes away under the running heads (as in a PostgreSQL restart, but local
    # to this database): head-2 answers from its cache, head-3 holds on to a record it
    # receives until the store is back, then head-1 serves it.
    mh3 = sha256_mh(b"received during the outage")
    async with outage(store):
        await anyio.sleep(1.2)  # head-2's cached set is past its 1 s TTL: it must try the store
        assert client.peer_id in await providers_at(infos[1], mh)
        await client.messenger.send(infos[2], Message(MessageType.ADD_PROVIDER, key=mh3, provider_peers=(me,)))
        await anyio.sleep(2)  # status lines (every 1 s) report the store down
    await eventually(lambda: _contains(providers_at(infos[0], mh3), client.peer_id))

    # Metrics name each head's identity.
    for _, argv in heads:
        url = f"http://{option(argv, '--metrics')}/metrics"
        text = await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        assert f'identity="{option(argv, "--identity")}"' in text and "dhtstore_store_up{" in text


@asynccontextmanager
async def outage(url: str) -> AsyncIterator[None]:
    """The database refuses connections and loses its sessions until the block ends."""
    u = make_url(url)
    admin = await asyncpg.connect(user=u.username, password=u.password, host=u.host, port=u.port or 5432, database="postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{u.database}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", u.database)
        try:
            yield
        finally:
            await admin.execute(f'ALTER DATABASE "{u.database}" WITH ALLOW_CONNECTIONS true')
    finally:
        await admin.close()


async def _contains(found, peer: PeerId) -> bool:  # type: ignore[no-untyped-def]
    return peer in await found
