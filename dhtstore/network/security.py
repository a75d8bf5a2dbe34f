"""The security protocols a connection is secured with: Noise (``/noise``) and TLS
(``/tls/1.0.0``), by the names a user gives them (``security = ["noise", "tls"]`` in
config.toml), and the one interface the host drives both through.

Outbound, multistream-select proposes the listed ones in the user's order; inbound, a
peer may pick any listed one, whatever the order; an unlisted one is refused. The default puts Noise first: every Amino peer
speaks it (Kubo, js-libp2p, rust-libp2p, py-libp2p), while most js-libp2p nodes have
no TLS, so a Noise-first dial never costs the extra round trip of a refused proposal.
Kubo proposes TLS first; it accepts either, so to Kubo the order makes no difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..crypto.keys import PrivateKey, PublicKey
from ..peerid import PeerId
from . import noise, tls
from .noise import HandshakeComplete
from .sansio import NeedData

# name (config.toml, stats) -> multistream protocol id
SECURITY_PROTOCOLS = {"noise": noise.PROTOCOL_ID, "tls": tls.PROTOCOL_ID}
DEFAULT_SECURITY = ("noise", "tls")
_NAMES = {pid: name for name, pid in SECURITY_PROTOCOLS.items()}

__all__ = [
    "DEFAULT_SECURITY",
    "SECURITY_PROTOCOLS",
    "SecureHandshake",
    "SecureTransport",
    "protocol_ids",
    "security_name",
    "start_handshake",
]


class SecureTransport(Protocol):
    """A secured byte stream's record layer: what ``Connection`` reads and writes through."""

    def encrypt(self, plaintext: bytes) -> bytes: ...

    def receive_data(self, ciphertext: bytes) -> None: ...

    def decrypt_available(self) -> bytes: ...


class SecureHandshake(Protocol):
    """A sans-I/O security handshake (``NoiseHandshake``, ``TlsHandshake``)."""

    @property
    def remote_peer(self) -> PeerId: ...

    @property
    def remote_public_key(self) -> PublicKey: ...

    @property
    def selected_muxer(self) -> str | None: ...

    def receive_data(self, data: bytes) -> None: ...

    def data_to_send(self) -> bytes: ...

    def next_event(self) -> HandshakeComplete | NeedData: ...

    def transport(self) -> SecureTransport: ...


def protocol_ids(names: Sequence[str]) -> tuple[str, ...]:
    """The protocol ids of security protocol names, in order; ValueError on an unknown
    name, a repeated one, or none at all."""
    unknown = [n for n in names if n not in SECURITY_PROTOCOLS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"security must list some of {', '.join(SECURITY_PROTOCOLS)} once each, got {list(names)}")
    return tuple(SECURITY_PROTOCOLS[n] for n in names)


def security_name(protocol_id: str) -> str:
    return _NAMES[protocol_id]


def start_handshake(
    protocol_id: str, identity: PrivateKey, initiator: bool, expected_peer: PeerId | None, stream_muxers: Sequence[str]
) -> SecureHandshake:
    """The handshake machine of an agreed security protocol (one of SECURITY_PROTOCOLS)."""
    if protocol_id == tls.PROTOCOL_ID:
        return tls.TlsHandshake(identity, initiator, expected_peer, stream_muxers)
    return noise.NoiseHandshake(identity, initiator, expected_peer, stream_muxers)
