"""IPNS records (``/ipns/`` namespace): parse, verify, select, and create.

Follows ipfs/specs ``src/ipns/ipns-record.md`` ("Record Verification", "Record
Creation") and boxo ``ipns/`` (``validation.go``, ``record.go``), which is the
reference for whatever the spec leaves open:

- the V2 signature covers ``b"ipns-signature:" + data``; ``signatureV1`` is never
  trusted, and when V1 fields are present they must equal the signed CBOR ones;
- ``data`` must be DAG-CBOR: the strict, canonical subset of CBOR (map keys sorted
  length-first, minimal integers, 64-bit floats, no tag but 42, no indefinite
  lengths), so the bytes that were signed are the only encoding of the document;
- the best of several records: one with a V2 signature, then the higher sequence,
  then the later EOL, then the larger raw bytes (boxo ``compare``/``selectRecord``).
"""

from __future__ import annotations

import datetime
import math
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import cbor2
from google.protobuf.message import DecodeError

from ..amino import MAX_IPNS_RECORD_SIZE
from ..crypto.keys import KeyFormatError, PrivateKey, PublicKey
from ..pb import ipns_pb2
from ..peerid import PeerId, PeerIdError
from . import timestamps
from .api import RecordError

NAMESPACE_PREFIX = b"/ipns/"
SIGNATURE_V2_PREFIX = b"ipns-signature:"
VALIDITY_EOL = 0
DEFAULT_TTL = datetime.timedelta(minutes=5)  # the spec's suggested default

_VALUE, _VALIDITY, _VALIDITY_TYPE, _SEQUENCE, _TTL = "Value", "Validity", "ValidityType", "Sequence", "TTL"
_UINT64_MAX = 2**64 - 1
_CID_TAG = 42
_MAX_CBOR_DEPTH = 64


class IpnsError(RecordError):
    """An IPNS record that is malformed, forged, expired or too large."""


@dataclass(frozen=True, slots=True)
class IpnsRecord:
    """A parsed, not yet verified, IPNS record. The fields are the signed CBOR ones."""

    raw: bytes
    pb: ipns_pb2.IpnsEntry
    fields: Mapping[str, Any]  # the decoded DAG-CBOR ``data`` map, extensions included; ``parse`` checked the types below

    @property
    def value(self) -> bytes:
        return cast(bytes, self.fields[_VALUE])

    @property
    def sequence(self) -> int:
        return cast(int, self.fields[_SEQUENCE])

    @property
    def ttl_ns(self) -> int:
        return cast(int, self.fields[_TTL])

    @property
    def validity_type(self) -> int:
        return cast(int, self.fields[_VALIDITY_TYPE])

    @property
    def validity(self) -> bytes:
        return cast(bytes, self.fields[_VALIDITY])

    def eol_ns(self) -> int:
        """The end of validity, in nanoseconds since the epoch."""
        if self.validity_type != VALIDITY_EOL:
            raise IpnsError(f"unrecognized validity type {self.validity_type}")
        try:
            return timestamps.parse_ns(self.validity)
        except timestamps.TimestampError as exc:
            raise IpnsError(f"invalid Validity: {exc}") from None


def routing_key(name: PeerId) -> bytes:
    """The DHT key of an IPNS name: ``/ipns/`` + the binary name (a peer id)."""
    return NAMESPACE_PREFIX + name.to_bytes()


def name_from_routing_key(key: bytes) -> PeerId:
    if not key.startswith(NAMESPACE_PREFIX):
        raise IpnsError("key is not in the /ipns/ namespace")
    try:
        return PeerId.from_bytes(key[len(NAMESPACE_PREFIX) :])
    except PeerIdError as exc:
        raise IpnsError(f"invalid IPNS name: {exc}") from None


def parse(raw: bytes) -> IpnsRecord:
    """Parse a serialized IpnsEntry and its DAG-CBOR data, without verifying it."""
    if len(raw) > MAX_IPNS_RECORD_SIZE:
        raise IpnsError(f"record of {len(raw)} bytes is over the {MAX_IPNS_RECORD_SIZE}-byte limit")
    pb = ipns_pb2.IpnsEntry()
    try:
        pb.ParseFromString(bytes(raw))
    except DecodeError as exc:
        raise IpnsError(f"IpnsEntry does not parse: {exc}") from None
    if not pb.data:
        raise IpnsError("record has no DAG-CBOR data (V1-only records are not accepted)")
    fields = decode_dag_cbor(pb.data)
    if not isinstance(fields, dict):
        raise IpnsError("IPNS data is not a DAG-CBOR map")
    _check_field(fields, _VALUE, bytes)
    _check_field(fields, _VALIDITY, bytes)
    for name in (_VALIDITY_TYPE, _SEQUENCE, _TTL):
        _check_field(fields, name, int)
        if not 0 <= fields[name] <= _UINT64_MAX:
            raise IpnsError(f"IPNS data field {name} is not a uint64")
    return IpnsRecord(bytes(raw), pb, fields)


def _check_field(fields: Mapping[str, Any], name: str, kind: type) -> None:
    if name not in fields:
        raise IpnsError(f"IPNS data has no {name}")
    if type(fields[name]) is not kind:
        raise IpnsError(f"IPNS data field {name} is not {kind.__name__}")


def verify(name: PeerId, raw: bytes, now_ns: int) -> IpnsRecord:
    """Verify a record for ``name`` as the spec's "Record Verification" lists it; return it parsed.

    Raises IpnsError on the first failed check.
    """
    record = parse(raw)  # steps 1 and 4: size, then the DAG-CBOR document
    pb = record.pb
    if not pb.signatureV2:  # step 2
        raise IpnsError("record has no signatureV2")
    public_key = _public_key(name, pb)  # step 3
    if not public_key.verify(SIGNATURE_V2_PREFIX + pb.data, pb.signatureV2):  # steps 5-6
        raise IpnsError("signatureV2 does not verify")
    if pb.signatureV1 or pb.value:  # step 7: V1 fields must repeat the signed ones
        legacy = (pb.value, pb.validity, int(pb.validityType), pb.sequence, pb.ttl)
        signed = (record.value, record.validity, record.validity_type, record.sequence, record.ttl_ns)
        for field_name, v1_value, signed_value in zip(("value", "validity", "validityType", "sequence", "ttl"), legacy, signed):
            if v1_value != signed_value:
                raise IpnsError(f"V1 field {field_name} differs from the signed data")
    if record.eol_ns() <= now_ns:  # step 8
        raise IpnsError("record has expired (Validity is in the past)")
    return record


def _public_key(name: PeerId, pb: ipns_pb2.IpnsEntry) -> PublicKey:
    if pb.pubKey:
        try:
            key = PublicKey.from_protobuf(pb.pubKey)
        except KeyFormatError as exc:
            raise IpnsError(f"invalid pubKey: {exc}") from None
        if key.peer_id() != name:
            raise IpnsError("pubKey does not belong to the IPNS name")
        return key
    inline = name.inline_public_key()
    if inline is None:
        raise IpnsError("public key not found: not in the record, not inlined in the name")
    try:
        return PublicKey.from_protobuf(inline)
    except KeyFormatError as exc:
        raise IpnsError(f"IPNS name inlines an invalid key: {exc}") from None


def select(values: list[bytes]) -> int:
    """Index of the best record (callers verify first). Raises IpnsError if one does not parse."""
    if not values:
        raise IpnsError("no records to select from")
    records = [parse(v) for v in values]
    best = 0
    for j in range(1, len(records)):
        if _rank(records[j]) > _rank(records[best]):
            best = j  # strictly better: on a full tie the first stays, as boxo selectRecord
    return best


def _rank(record: IpnsRecord) -> tuple[bool, int, int, bytes]:
    return bool(record.pb.signatureV2), record.sequence, record.eol_ns(), record.raw


def create(
    private_key: PrivateKey,
    value: bytes,
    sequence: int,
    eol: datetime.datetime,
    ttl: datetime.timedelta = DEFAULT_TTL,
    *,
    v1_compatible: bool = True,
    embed_public_key: bool | None = None,
) -> bytes:
    """Build and sign a serialized IpnsEntry (V1+V2 unless ``v1_compatible`` is False).

    ``eol`` must be timezone-aware. The public key is embedded when the name cannot
    inline it (RSA, ECDSA), unless ``embed_public_key`` says otherwise.
    """
    if eol.tzinfo is None:
        raise ValueError("eol must be timezone-aware")
    if not 0 <= sequence <= _UINT64_MAX:
        raise ValueError("sequence must be a uint64")
    validity = timestamps.format_ns(_datetime_ns(eol)).encode()
    ttl_ns = max(0, (ttl // datetime.timedelta(microseconds=1)) * 1000)
    data = encode_dag_cbor(
        {_VALUE: bytes(value), _VALIDITY: validity, _VALIDITY_TYPE: VALIDITY_EOL, _SEQUENCE: sequence, _TTL: ttl_ns}
    )
    pb = ipns_pb2.IpnsEntry(data=data, signatureV2=private_key.sign(SIGNATURE_V2_PREFIX + data))
    if v1_compatible:
        pb.value, pb.validity, pb.validityType = bytes(value), validity, ipns_pb2.IpnsEntry.EOL
        pb.sequence, pb.ttl = sequence, ttl_ns
        # V1 signs value ‖ validity ‖ the enum's name, as Go's fmt.Append of the enum writes it.
        pb.signatureV1 = private_key.sign(bytes(value) + validity + b"EOL")
    public_key = private_key.public_key()
    if embed_public_key is None:
        embed_public_key = public_key.peer_id().inline_public_key() is None
    if embed_public_key:
        pb.pubKey = public_key.to_protobuf()
    raw = pb.SerializeToString(deterministic=True)
    if len(raw) > MAX_IPNS_RECORD_SIZE:
        raise ValueError(f"record of {len(raw)} bytes is over the {MAX_IPNS_RECORD_SIZE}-byte limit")
    return raw


def _datetime_ns(t: datetime.datetime) -> int:
    delta = t - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta // datetime.timedelta(microseconds=1)) * 1000


# --- DAG-CBOR -------------------------------------------------------------------


def decode_dag_cbor(data: bytes) -> Any:
    """Decode DAG-CBOR, refusing anything that is not its one canonical encoding."""
    try:
        obj = cbor2.loads(
            data,
            tag_hook=_keep_cid_tag,
            max_depth=_MAX_CBOR_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise IpnsError(f"IPNS data is not valid CBOR: {exc}") from None
    _check_dag_cbor_kinds(obj)
    try:
        canonical = encode_dag_cbor(obj)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:  # pragma: no cover - kinds were checked
        raise IpnsError(f"IPNS data is not DAG-CBOR: {exc}") from None
    if canonical != data:
        raise IpnsError("IPNS data is not canonical DAG-CBOR (key order, integer or float width, ...)")
    return obj


def encode_dag_cbor(obj: Any) -> bytes:
    """Canonical DAG-CBOR: map keys length-first then bytewise, minimal ints, 64-bit floats."""
    return cbor2.dumps(obj, canonical=True, encoders={float: _encode_float64})


def _encode_float64(encoder: Any, value: float) -> None:
    encoder.write(b"\xfb" + struct.pack(">d", value))


def _keep_cid_tag(tag: cbor2.CBORTag, immutable: bool) -> cbor2.CBORTag:
    # DAG-CBOR allows one tag, 42 (a CID: byte string with a 0x00 multibase prefix).
    if tag.tag != _CID_TAG or not isinstance(tag.value, bytes) or tag.value[:1] != b"\x00":
        raise cbor2.CBORDecodeError(f"CBOR tag {tag.tag} is not allowed in DAG-CBOR")
    return tag


def _check_dag_cbor_kinds(obj: Any, depth: int = 0) -> None:
    """Only the IPLD data model's kinds; cbor2's own decoders (dates, bignums, ...) are refused."""
    if depth > _MAX_CBOR_DEPTH:
        raise IpnsError("IPNS data nests too deeply")
    kind = type(obj)
    if kind is dict:
        for key, item in obj.items():
            if type(key) is not str:
                raise IpnsError("DAG-CBOR map keys must be strings")
            _check_dag_cbor_kinds(item, depth + 1)
    elif kind is list:
        for item in obj:
            _check_dag_cbor_kinds(item, depth + 1)
    elif kind is int:
        if not -(2**64) <= obj <= _UINT64_MAX:
            raise IpnsError("DAG-CBOR integer out of the 64-bit range")
    elif kind is float:
        if not math.isfinite(obj):
            raise IpnsError("DAG-CBOR forbids NaN and infinities")
    elif kind is cbor2.CBORTag:
        return  # the tag hook let only CIDs through
    elif kind not in (str, bytes, bool, type(None)):
        raise IpnsError(f"CBOR value of kind {kind.__name__} is not allowed in DAG-CBOR")


def now_ns(clock: Callable[[], float] = time.time) -> int:
    """Nanoseconds since the epoch by ``clock`` (seconds since the epoch)."""
    return int(clock() * timestamps.NS_PER_SECOND)
