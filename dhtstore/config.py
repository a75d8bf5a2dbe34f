"""The node's data directory: its config file (TOML), identity key and default store.

Layout of a data directory (default ``~/.dhtstore``)::

    config.toml    listen addresses, mode, protocol, bootstrap peers, store URL, security
    identity.key   the node's Ed25519 private key (libp2p PrivateKey protobuf), mode 0600
    identities/    further named identities, NAME.key each (``--identity NAME``), for
                   several processes sharing this config and one PostgreSQL store
    dhtstore.db    the SQLite store, unless config.toml names another store
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .amino import LAN_PROTOCOL_ID, PROTOCOL_ID
from .crypto.keys import KeyFormatError, PrivateKey
from .network.api import DEFAULT_SECURITY, HostLimits, ScopeLimits, protocol_ids

DEFAULT_DATA_DIR = Path("~/.dhtstore")
CONFIG_FILE_NAME = "config.toml"
IDENTITY_FILE_NAME = "identity.key"
IDENTITIES_DIR_NAME = "identities"
DEFAULT_IDENTITY = "default"  # the name of identity.key in status lines and metrics
_IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# TCP and QUIC on the same port, as Kubo's defaults (Addresses.Swarm).
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1")
MODES = ("auto", "server", "client")
PROTOCOLS = (PROTOCOL_ID, LAN_PROTOCOL_ID)
ROUTING_TABLES = ("kbuckets", "full")

# Kubo's default bootstrap peers for the public Amino DHT (kubo config/bootstrap_peers.go,
# the same list kubo's sharness test t0120-bootstrap expects).
AMINO_BOOTSTRAP_PEERS = (
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/dnsaddr/va1.bootstrap.libp2p.io/p2p/12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
    "/ip4/104.131.131.82/udp/4001/quic-v1/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
)


class ConfigError(Exception):
    """A config or identity file that cannot be used; one line saying why."""


@dataclass(frozen=True)
class Config:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    mode: str = "auto"  # auto: server once publicly reachable, as go's ModeAuto
    protocol: str = PROTOCOL_ID
    bootstrap: tuple[str, ...] = AMINO_BOOTSTRAP_PEERS
    store: str = ""  # a database URL; empty means dhtstore.db in the data directory
    http: str = ""  # HOST:PORT of the Delegated Routing V1 HTTP API; empty: not served
    routing_table: str = "kbuckets"  # or "full": the whole network, crawled, in the store
    security: tuple[str, ...] = DEFAULT_SECURITY  # proposed in this order when dialling; all accepted
    limits: HostLimits = HostLimits()  # [limits]: README "Limits"
    extra: dict[str, object] = field(default_factory=dict, compare=False)  # sections other modules own

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode = {self.mode!r}: use one of {', '.join(MODES)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol = {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        for name, value in (("listen", self.listen), ("bootstrap", self.bootstrap)):
            if not all(isinstance(a, str) and a.startswith("/") for a in value):
                raise ConfigError(f"{name} must be a list of multiaddr strings (each starting with '/')")
        if self.http:
            parse_host_port(self.http, "http")
        if self.routing_table not in ROUTING_TABLES:
            raise ConfigError(f"routing_table = {self.routing_table!r}: use one of {', '.join(ROUTING_TABLES)}")
        try:
            protocol_ids(self.security)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) → (host, port); ConfigError naming ``what``."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(values: tuple[str, ...]) -> str:
    return "[\n" + "".join(f"  {_toml_str(v)},\n" for v in values) + "]"


UNLIMITED_SCOPE = ScopeLimits()


def _render_limits(limits: HostLimits) -> str:
    scalars = [f"{f.name} = {getattr(limits, f.name)!r}" for f in dataclasses.fields(limits) if f.name != "resources"]
    out = "[limits]\n" + "\n".join(scalars) + "\n"
    for scope in dataclasses.fields(limits.resources):
        values: ScopeLimits = getattr(limits.resources, scope.name)
        given = [
            f"{f.name} = {getattr(values, f.name)}"
            for f in dataclasses.fields(values)
            if getattr(values, f.name) != getattr(UNLIMITED_SCOPE, f.name)
        ]
        out += f"\n[limits.{scope.name}]\n" + "".join(line + "\n" for line in given)
    return out


def render(config: Config) -> str:
    """The config file text; ``load`` reads it back to an equal Config."""
    return f"""# dhtstore node configuration (TOML).

# Multiaddrs to listen on: /ip4|ip6/<ip>/tcp/<port> (Noise or TLS, then yamux) and
# /ip4|ip6/<ip>/udp/<port>/quic-v1 (QUIC v1). Dials try a peer's QUIC addresses first.
listen = {_toml_list(config.listen)}

# "server" answers DHT requests and advertises {PROTOCOL_ID}; "client" only queries;
# "auto" starts as a client and becomes a server once publicly reachable.
mode = {_toml_str(config.mode)}

# "{PROTOCOL_ID}" (the public Amino DHT) or "{LAN_PROTOCOL_ID}" (Kubo's LAN DHT).
protocol = {_toml_str(config.protocol)}

# Peers to join the DHT through: the public Amino bootstrap list.
bootstrap = {_toml_list(config.bootstrap)}

# Where the node keeps its state: a database URL, e.g.
# "postgresql+asyncpg://user@host/dbname". Empty: dhtstore.db in this directory.
# --store / DHTSTORE_STORE override it.
store = {_toml_str(config.store)}

# Serve the Delegated Routing V1 HTTP API (/routing/v1/...) on HOST:PORT, e.g.
# "127.0.0.1:8080". Empty: not served. --http overrides it.
http = {_toml_str(config.http)}

# "kbuckets" (k-bucket table, as go-libp2p-kad-dht) or "full": every DHT server of the
# network, crawled incrementally and kept in the store; lookups then take one hop.
# --routing-table overrides it.
routing_table = {_toml_str(config.routing_table)}
# Connection security, in the order we propose it when dialling ("noise", "tls");
# inbound connections may use any listed. Noise first saves a round trip with the many
# js-libp2p peers that have no TLS; Kubo accepts either.
security = {_toml_list(config.security)}
# Limits (README "Limits"): the connection manager and timeouts (seconds), then the
# resource manager's limits per scope; a limit not listed in a scope is unlimited.
# No address is exempt, loopback included.
{_render_limits(config.limits)}"""


def load(path: Path) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}: run `dhtstore init`") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    known = {"listen", "mode", "protocol", "bootstrap", "store", "http", "routing_table", "security", "limits"}
    try:
        limits = HostLimits.from_config(data.get("limits"))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return Config(
            listen=tuple(data.get("listen", DEFAULT_LISTEN)),
            mode=data.get("mode", "auto"),
            protocol=data.get("protocol", PROTOCOL_ID),
            bootstrap=tuple(data.get("bootstrap", AMINO_BOOTSTRAP_PEERS)),
            store=str(data.get("store", "")),
            http=str(data.get("http", "")),
            routing_table=str(data.get("routing_table", "kbuckets")),
            security=_names(data.get("security", DEFAULT_SECURITY)),
            limits=limits,
            extra={k: v for k, v in data.items() if k not in known},
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except TypeError:
        raise ConfigError(f"{path}: listen, bootstrap and security must be lists of strings") from None


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError("not a list of strings")
    return tuple(value)


def identity_path(data_dir: Path, name: str | None) -> Path:
    """The key file of identity ``name`` (None or "default": ``identity.key``).

    A name is a file name, not a path: letters, digits, ``_``, ``.``, ``-``, at most 64,
    not starting with a dot, so ``--identity ../x`` cannot leave the data directory.
    """
    if name is None or name == DEFAULT_IDENTITY:
        return data_dir / IDENTITY_FILE_NAME
    if not _IDENTITY_NAME.fullmatch(name):
        raise ConfigError(
            f"identity name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return data_dir / IDENTITIES_DIR_NAME / f"{name}.key"


def write_new_identity(path: Path) -> PrivateKey:
    """Generate an Ed25519 identity and write it, readable only by its owner.

    Refuses (ConfigError) to overwrite an existing key: it is the node's identity.
    """
    key = PrivateKey.generate()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to replace the node's identity key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_protobuf())
    return key


def read_identity(path: Path, init_command: str = "dhtstore init") -> PrivateKey:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"{path} is readable by others (mode {mode & 0o777:o}): run `chmod 600 {path}`")
        return PrivateKey.from_protobuf(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no identity key at {path}: run `{init_command}`") from None
    except KeyFormatError as exc:
        raise ConfigError(f"{path} is not a libp2p private key: {exc}") from None
