"""``dhtstore run``: the long-running node, and the one-shot client commands
(``findprovs``, ``findpeer``, ``get``, ``put``, ``closest``) that start a short-lived
client-mode node with in-memory stores."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import click

from .. import amino, multihash
from ..config import ROUTING_TABLES, Config, ConfigError, parse_host_port, read_identity
from ..crypto.keys import PrivateKey
from ..network import multiaddrs
from ..node import Mode, Node, NodeOptions, RoutingTableKind
from ..peerid import PeerId, PeerIdError
from ..providerstore.api import ProviderQuotas
from ..records.api import RecordError, key_text
from ..routing.api import LookupTimeout, NotFound, QuorumFailed, RoutingError
from ..types import PeerInfo
from .common import Location, fail, identity_option, location_options, run
from .group import main

log = logging.getLogger("dhtstore")

T = TypeVar("T")


def _is_private_bootstrap(addrs: Sequence[str]) -> bool:
    """True when a bootstrap address is an IP on loopback or a private network: then
    peers with such addresses must be allowed into the routing table, or nothing would
    be. A DNS name (the Amino list's /dnsaddr entries) says nothing about that."""
    for text in addrs:
        try:
            ip = multiaddrs.leading_ip(multiaddrs.parse(text).to_bytes())
        except multiaddrs.MultiaddrFormatError:
            continue
        if ip is not None and not ip.is_global:
            return True
    return False


def _provider_quotas(config: Config) -> ProviderQuotas:
    """``[provider_quotas]`` of config.toml: ``per_key``, ``per_provider``, ``total``
    (positive integers; the ones left out keep ProviderQuotas' defaults)."""
    section = config.extra.get("provider_quotas", {})
    names = {f.name for f in dataclasses.fields(ProviderQuotas)}
    if not isinstance(section, dict) or not set(section) <= names:
        raise fail(f"config.toml: [provider_quotas] takes {', '.join(sorted(names))}")
    for name, value in section.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(f"config.toml: provider_quotas.{name} must be a positive integer, not {value!r}")
    return ProviderQuotas(**section)


def _node_options(
    where: Location,
    config: Config,
    *,
    listen: Sequence[str],
    bootstrap: Sequence[str],
    mode: str | None,
    lan: bool,
    allow_private: bool | None,
    identity: PrivateKey | None = None,
    store: bool = True,
    reprovide: bool = True,
) -> NodeOptions:
    protocol = amino.LAN_PROTOCOL_ID if lan else config.protocol
    boot = list(bootstrap or config.bootstrap)
    if allow_private is None:
        allow_private = protocol == amino.LAN_PROTOCOL_ID or bool(config.extra.get("allow_private_addrs", False)) or _is_private_bootstrap(boot)
    chosen_mode = mode or config.mode
    return NodeOptions(
        identity=identity or read_identity(where.identity_file, where.init_command),
        identity_name=where.identity,
        store_url=where.store_url() if store else None,
        listen=list(listen or config.listen),
        bootstrap=boot,
        mode=cast(Mode, chosen_mode),  # Config checked it is one of MODES
        protocol=protocol,
        allow_private_addrs=allow_private,
        ip_diversity=not allow_private,
        limits=config.limits,
        reprovide=reprovide,
        security=config.security,
        provider_quotas=_provider_quotas(config),
    )


def _config(where: Location) -> Config:
    try:
        return where.config()
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _format_status(status: dict[str, Any]) -> str:
    requests = status["requests"]
    served = " ".join(f"{k}={v}" for k, v in sorted(requests.items())) or "none"
    errors = sum(v for k, v in status["errors"].items() if "fail" in k or "invalid" in k or "refused" in k)
    return (
        f"status: identity={status['identity']} store={status['store']} table={status['routing_table']} connected={status['connected_peers']} "
        f"provider_records={status['provider_records']} reprovider={status['reprovider']} requests[{served}] errors={errors}"
    )


@main.command("run")
@location_options
@identity_option
@click.option("--listen", "listen", multiple=True, metavar="MULTIADDR", help="Listen address (repeatable). [config: listen]")
@click.option("--bootstrap", "bootstrap", multiple=True, metavar="MULTIADDR", help="Bootstrap peer /…/p2p/ID (repeatable). [config: bootstrap]")
@click.option("--mode", type=click.Choice(["server", "client", "auto"]), help="Serve the DHT (server) or only use it (client). [config: mode]")
@click.option("--lan", is_flag=True, help="Speak the LAN DHT protocol /ipfs/lan/kad/1.0.0 (as Kubo does on a LAN).")
@click.option("--allow-private-addrs/--public-addrs-only", "allow_private", default=None, help="Admit peers with only private or loopback addresses (default: yes on a LAN or with a private bootstrap peer).")
@click.option("--metrics", "metrics_addr", metavar="HOST:PORT", help="Serve Prometheus metrics here.")
@click.option("--http", "http_addr", metavar="HOST:PORT", help="Serve the Delegated Routing V1 HTTP API (/routing/v1) here. [config: http]")
@click.option("--status-interval", type=float, default=60.0, show_default=True, help="Seconds between status lines.")
@click.option("--no-reprovide", is_flag=True, help="Serve the DHT but do not provide the provide list.")
@click.option(
    "--claim-lease",
    type=click.FloatRange(min=3),
    default=NodeOptions.claim_lease,
    show_default=True,
    metavar="SECONDS",
    help="On a shared store: how long the slice of the provide list a stopped process was providing waits before another process takes it over.",
)
@click.option(
    "--routing-table",
    type=click.Choice(ROUTING_TABLES),
    help="kbuckets, or full: every DHT server, crawled incrementally and kept in the store; lookups in one hop. [config: routing_table]",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def run_command(
    where: Location,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    mode: str | None,
    lan: bool,
    allow_private: bool | None,
    metrics_addr: str | None,
    http_addr: str | None,
    status_interval: float,
    no_reprovide: bool,
    claim_lease: float,
    routing_table: str | None,
    verbose: bool,
) -> None:
    """Run the node until SIGINT or SIGTERM (SIGUSR1 prints a status line)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # their per-job and per-migration chatter is debug detail here
        for noisy in ("apscheduler", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    config = _config(where)
    try:
        opts = _node_options(where, config, listen=listen, bootstrap=bootstrap, mode=mode, lan=lan, allow_private=allow_private, reprovide=not no_reprovide)
        opts = dataclasses.replace(
            opts, claim_lease=claim_lease, routing_table=cast(RoutingTableKind, routing_table or config.routing_table)
        )
    except ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        metrics_endpoint = parse_host_port(metrics_addr, "--metrics") if metrics_addr else None
        http_endpoint = parse_host_port(http_addr or config.http, "--http") if http_addr or config.http else None
    except ConfigError as exc:
        raise fail(str(exc)) from None
    run(_run_node, opts, metrics_endpoint, http_endpoint, status_interval)




async def _run_node(
    opts: NodeOptions, metrics_endpoint: tuple[str, int] | None, http_endpoint: tuple[str, int] | None, status_interval: float
) -> None:
    # Signals are taken from before the node starts: a SIGTERM during start-up then stops
    # it cleanly once started, instead of killing the process half-way.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        async with Node.start(opts) as node, AsyncExitStack() as stack:
            for addr in node.addresses():
                log.info("listening on %s", addr)
            log.info("identity %s, peer id %s, mode %s, protocol %s, store %s", opts.identity_name, node.peer_id, node.status()["mode"], opts.protocol, "yes" if opts.store_url else "memory")
            if metrics_endpoint:
                node.metrics.serve(*metrics_endpoint)
                log.info("metrics on http://%s:%d/metrics", *metrics_endpoint)
            if http_endpoint:
                bound = await stack.enter_async_context(node.routing_api().serve(*http_endpoint))
                log.info("delegated routing HTTP API on http://%s:%d/routing/v1", *bound)
            async with anyio.create_task_group() as tg:

                async def status_lines() -> None:
                    while True:
                        await anyio.sleep(status_interval)
                        log.info(_format_status(node.status()))

                tg.start_soon(status_lines)
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        log.info(_format_status(node.status()))
                        continue
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    break
    log.info("stopped; routing-table snapshot written")


# -- one-shot client commands -------------------------------------------------------


def client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)
    command = click.option("--timeout", type=float, default=60.0, show_default=True, help="Give up after this many seconds.")(command)
    command = click.option("--lan", is_flag=True, help="Use the LAN DHT protocol.")(command)
    command = click.option("--bootstrap", "bootstrap", multiple=True, metavar="MULTIADDR", help="Bootstrap peer (repeatable). [config: bootstrap]")(command)
    return location_options(command)


CLOSE_GRACE = 5.0  # seconds the node may take to close after a lookup that used all of --timeout


def _one_shot(where: Location, bootstrap: tuple[str, ...], lan: bool, timeout: float, body: Callable[[Node, float], Awaitable[T]]) -> T:
    """Start a client node, bootstrap, and run ``body(node, seconds left of --timeout)``.

    The lookup outcomes NotFound, QuorumFailed and LookupTimeout reach the caller, which
    words them for its command; any other routing error becomes a one-line error."""
    config = _config(where)
    opts = _node_options(
        where, config, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=bootstrap, mode="client", lan=lan,
        allow_private=None, identity=PrivateKey.generate(), store=False, reprovide=False,
    )
    if not opts.bootstrap:
        raise fail("no bootstrap peers: pass --bootstrap /ip4/…/tcp/…/p2p/ID or set bootstrap in config.toml")

    async def go() -> T:
        deadline = anyio.current_time() + timeout
        with anyio.fail_after(timeout + CLOSE_GRACE):
            async with Node.start(opts) as node:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                    await node.upkeep.bootstrapped.wait()
                if not len(node.table):
                    raise fail("could not reach any bootstrap peer (is the node running? are the addresses right?)")
                return await body(node, max(deadline - anyio.current_time(), 0))

    try:
        return run(go)
    except TimeoutError:
        raise fail(f"timed out after {timeout:g} s") from None
    except (NotFound, QuorumFailed, LookupTimeout):
        raise
    except RoutingError as exc:
        raise fail(str(exc)) from None


def _peer_json(peer: PeerInfo) -> dict[str, Any]:
    return {"id": str(peer.peer_id), "addrs": multiaddrs.printable(peer.addrs)}


def _print_peers(peers: list[PeerInfo], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([_peer_json(p) for p in peers]))
        return
    for peer in peers:
        info = _peer_json(peer)
        click.echo(" ".join([info["id"], *info["addrs"]]))


def _parse_record_key(text: str) -> bytes:
    """``/pk/<peer id>`` or ``/ipns/<peer id>`` (any peer-id text form) → the binary routing key."""
    parts = text.split("/")
    if len(parts) != 3 or parts[0] or parts[1] not in ("pk", "ipns"):
        raise fail(f"key {text!r}: expected /pk/<peer id> or /ipns/<name>")
    try:
        return f"/{parts[1]}/".encode() + PeerId.from_string(parts[2]).to_bytes()
    except PeerIdError as exc:
        raise fail(f"key {text!r}: {exc}") from None


@main.command("findprovs")
@click.argument("cid")
@click.option("-n", "--count", type=int, default=amino.BUCKET_SIZE, show_default=True, help="Stop after this many providers.")
@client_options
def findprovs(where: Location, cid: str, count: int, bootstrap: tuple[str, ...], lan: bool, timeout: float, as_json: bool) -> None:
    """Find providers of CID."""
    try:
        multihash.from_cid(cid)
    except multihash.MultihashError as exc:
        raise fail(str(exc)) from None
    try:
        peers = _one_shot(where, bootstrap, lan, timeout, lambda node, left: node.find_providers(cid, count, timeout=left))
    except LookupTimeout as exc:
        raise fail(f"timed out after {timeout:g} s, with {len(exc.peers)} of {count} providers found") from None
    _print_peers(peers, as_json)
    if not peers:
        sys.exit(1)


@main.command("findpeer")
@click.argument("peer")
@client_options
def findpeer(where: Location, peer: str, bootstrap: tuple[str, ...], lan: bool, timeout: float, as_json: bool) -> None:
    """Find the addresses of PEER (a peer id)."""
    try:
        target = PeerId.from_string(peer)
    except PeerIdError as exc:
        raise fail(str(exc)) from None
    try:
        found = _one_shot(where, bootstrap, lan, timeout, lambda node, left: node.find_peer(target, timeout=left))
    except NotFound:
        raise fail(f"peer {target} not found") from None
    except LookupTimeout:
        raise fail(f"timed out after {timeout:g} s looking for peer {target}") from None
    _print_peers([found], as_json)


@main.command("closest")
@click.argument("key")
@client_options
def closest(where: Location, key: str, bootstrap: tuple[str, ...], lan: bool, timeout: float, as_json: bool) -> None:
    """The 20 DHT servers closest to KEY (a peer id, a CID, or any text)."""
    try:
        raw = PeerId.from_string(key).to_bytes()
    except PeerIdError:
        try:
            raw = multihash.from_cid(key)
        except multihash.MultihashError:
            raw = key.encode()
    try:
        peers = _one_shot(where, bootstrap, lan, timeout, lambda node, left: node.closest_peers(raw, timeout=left))
    except LookupTimeout as exc:
        raise fail(f"timed out after {timeout:g} s, when {len(exc.peers)} of the closest peers had answered") from None
    _print_peers(peers, as_json)


@main.command("get")
@click.argument("key")
@click.option("--quorum", type=int, default=0, help="Stop after this many valid records; fewer by the end of the lookup is an error (0: the whole lookup, no minimum; 16 for IPNS as Kubo).")
@client_options
def get(where: Location, key: str, quorum: int, bootstrap: tuple[str, ...], lan: bool, timeout: float, as_json: bool) -> None:
    """Get the value record at KEY (/pk/<peer id> or /ipns/<name>); the value goes to stdout."""
    raw = _parse_record_key(key)
    try:
        record = _one_shot(where, bootstrap, lan, timeout, lambda node, left: node.get_value(raw, quorum, timeout=left))
    except NotFound:
        raise fail(f"no record found for {key}") from None
    except QuorumFailed as exc:
        raise fail(f"only {len(exc.records)} valid records found for {key}, fewer than --quorum {exc.quorum}") from None
    except LookupTimeout as exc:
        raise fail(f"timed out after {timeout:g} s, with {len(exc.records)} valid records found for {key}") from None
    if as_json:
        click.echo(json.dumps({"key": key_text(record.key), "value_hex": record.value.hex(), "time_received": record.time_received}))
    else:
        sys.stdout.buffer.write(record.value)


@main.command("put")
@click.argument("key")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@client_options
def put(where: Location, key: str, file: Path, bootstrap: tuple[str, ...], lan: bool, timeout: float, as_json: bool) -> None:
    """Put the record value in FILE at KEY (validated before anything is sent)."""
    raw = _parse_record_key(key)
    value = file.read_bytes()

    async def body(node: Node, left: float) -> int:
        try:
            with anyio.fail_after(left):
                return await node.put_value(raw, value)
        except RecordError as exc:
            raise fail(f"invalid record for {key}: {exc}") from None

    stored = _one_shot(where, bootstrap, lan, timeout, body)
    click.echo(json.dumps({"key": key, "peers": stored}) if as_json else f"stored on {stored} peers")
    if not stored:
        sys.exit(1)
