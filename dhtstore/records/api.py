"""Value records: validation and selection per namespace, and where valid records are kept.

Only ``/pk/`` and ``/ipns/`` are accepted on the Amino DHT; any other namespace is
rejected (ipfs/specs kad-dht "Record Routing"; go config.Validate).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import base58

from ..types import Record


class RecordError(ValueError):
    """A record that is invalid for its key: bad signature, expired, oversized, unknown namespace."""


@runtime_checkable
class Validator(Protocol):
    def validate(self, key: bytes, value: bytes) -> None:
        """Raise RecordError unless ``value`` is a valid record for ``key``."""
        ...

    def select(self, key: bytes, values: list[bytes]) -> int:
        """Index of the best of several valid values (callers validate first)."""
        ...


@runtime_checkable
class ValueStore(Protocol):
    """Holds validated records. ``get`` returns None for a record older than MAX_RECORD_AGE
    (go-libp2p-kad-dht ``MaxRecordAge``, 48 h).

    A store on a database raises ``dhtstore.errors.StoreUnavailable`` when the database
    fails; an in-memory store never does.
    """

    async def get(self, key: bytes) -> Record | None: ...

    async def put(self, record: Record) -> Record:
        """Store ``record`` unless the stored one is better; return the one kept.

        The record must already be validated; ``put`` applies ``Validator.select``.
        """
        ...

    async def count(self) -> int:
        """Records held, including any past MAX_RECORD_AGE that ``sweep`` has not removed yet."""
        ...

    async def sweep(self) -> int:
        """Delete every record older than MAX_RECORD_AGE; return how many went. Reads
        already hide them: this frees the space of records nobody reads."""
        ...


def key_text(key: bytes) -> str:
    """``/ipns/<binary>`` → ``/ipns/<base58btc>``, the readable twin of a record key."""
    if key.startswith(b"/"):
        slash = key.find(b"/", 1)
        if slash > 1:
            namespace = key[1:slash].decode("ascii", "replace")
            return f"/{namespace}/{base58.b58encode(key[slash + 1 :]).decode()}"
    return base58.b58encode(key).decode()
