"""The Amino DHT's record validator: ``/pk/`` and ``/ipns/``, and no other namespace.

Like go-libp2p-record's ``NamespacedValidator`` with the two validators that
go-libp2p-kad-dht installs for the Amino DHT (its config refuses any other).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import ipns, pk
from .api import RecordError, Validator

Clock = Callable[[], float]  # seconds since the Unix epoch


def split_key(key: bytes) -> tuple[bytes, bytes]:
    """``/<namespace>/<rest>`` → (namespace, rest), as go-libp2p-record ``SplitKey``."""
    if not key.startswith(b"/"):
        raise RecordError("record key does not start with '/'")
    slash = key.find(b"/", 1)
    if slash <= 1:
        raise RecordError("record key has no namespace")
    return key[1:slash], key[slash + 1 :]


class PublicKeyValidator:
    def validate(self, key: bytes, value: bytes) -> None:
        pk.verify(key, value)

    def select(self, key: bytes, values: list[bytes]) -> int:
        if not values:
            raise RecordError("no records to select from")
        return 0  # every valid value for a /pk/ key is the same key


class IpnsValidator:
    """Verifies IPNS records; ``clock`` decides whether a record's EOL has passed."""

    def __init__(self, clock: Clock = time.time):
        self._clock = clock

    def validate(self, key: bytes, value: bytes) -> None:
        ipns.verify(ipns.name_from_routing_key(key), value, ipns.now_ns(self._clock))

    def select(self, key: bytes, values: list[bytes]) -> int:
        return ipns.select(values)


class NamespacedValidator:
    """Dispatches on the key's namespace; an unknown namespace is a RecordError."""

    def __init__(self, clock: Clock = time.time):
        self._by_namespace: dict[bytes, Validator] = {b"pk": PublicKeyValidator(), b"ipns": IpnsValidator(clock)}

    def _for(self, key: bytes) -> Validator:
        namespace, _ = split_key(key)
        validator = self._by_namespace.get(namespace)
        if validator is None:
            raise RecordError(f"unknown record namespace {namespace[:32]!r}")
        return validator

    def validate(self, key: bytes, value: bytes) -> None:
        self._for(key).validate(key, value)

    def select(self, key: bytes, values: list[bytes]) -> int:
        if not values:
            raise RecordError("no records to select from")
        return self._for(key).select(key, values)
