"""IPNS records: the spec's test vectors, records we create, forgeries and malformed input."""

from __future__ import annotations

import datetime
from pathlib import Path

import cbor2
import pytest
from cid import from_string
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtstore.amino import MAX_IPNS_RECORD_SIZE
from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.pb import ipns_pb2
from dhtstore.peerid import PeerId
from dhtstore.records import ipns
from dhtstore.records.api import RecordError

DATA = Path(__file__).parent / "data" / "ipns"
NOW = ipns.now_ns()
UTC = datetime.timezone.utc

# ipfs/specs src/ipns/ipns-record.md "Test Vectors" (files from ipfs/gateway-conformance
# fixtures/ipns_records): name_kind → expected value, or None when the record is invalid.
VECTORS = {
    "k51qzi5uqu5dm4tm0wt8srkg9h9suud4wuiwjimndrkydqm81cqtlb5ak6p7ku_v1": None,
    "k51qzi5uqu5dlkw8pxuw9qmqayfdeh4kfebhmreauqdc6a7c3y7d5i9fi8mk9w_v1-v2": b"/ipfs/bafkqaddwgevxmmraojswg33smq",
    "k51qzi5uqu5dlmit2tuwdvnx4sbnyqgmvbxftl0eo3f33wwtb9gr7yozae9kpw_v1-v2-broken-v1-value": None,
    "k51qzi5uqu5diamp7qnnvs1p1gzmku3eijkeijs3418j23j077zrkok63xdm8c_v1-v2-broken-signature-v2": None,
    "k51qzi5uqu5dilgf7gorsh9vcqqq4myo6jd4zmqkuy9pxyxi5fua3uf7axph4y_v1-v2-broken-signature-v1": (
        b"/ipfs/bafkqahtwgevxmmrao5uxi2bamjzg623fnyqhg2lhnzqxi5lsmuqhmmi"
    ),
    "k51qzi5uqu5dit2ku9mutlfgwyz8u730on38kd10m97m36bjt66my99hb6103f_v2": b"/ipfs/bafkqadtwgiww63tmpeqhezldn5zgi",
}


def vector(stem: str) -> tuple[PeerId, bytes]:
    name = PeerId.from_bytes(bytes(from_string(stem.split("_")[0]).multihash))
    return name, (DATA / f"{stem}.ipns-record").read_bytes()


@pytest.mark.parametrize("stem", sorted(VECTORS))
def test_spec_vectors(stem: str) -> None:
    name, raw = vector(stem)
    expected = VECTORS[stem]
    if expected is None:
        with pytest.raises(ipns.IpnsError):
            ipns.verify(name, raw, NOW)
    else:
        assert ipns.verify(name, raw, NOW).value == expected


def test_v1_only_vector_is_rejected_for_lack_of_v2() -> None:
    name, raw = vector("k51qzi5uqu5dm4tm0wt8srkg9h9suud4wuiwjimndrkydqm81cqtlb5ak6p7ku_v1")
    with pytest.raises(ipns.IpnsError, match="V1-only"):
        ipns.verify(name, raw, NOW)


def test_vector_is_rejected_under_another_name() -> None:
    _, raw = vector("k51qzi5uqu5dit2ku9mutlfgwyz8u730on38kd10m97m36bjt66my99hb6103f_v2")
    other, _ = vector("k51qzi5uqu5dlkw8pxuw9qmqayfdeh4kfebhmreauqdc6a7c3y7d5i9fi8mk9w_v1-v2")
    with pytest.raises(ipns.IpnsError, match="signatureV2"):
        ipns.verify(other, raw, NOW)


@pytest.fixture(scope="module")
def keys() -> dict[KeyType, PrivateKey]:
    return {t: PrivateKey.generate(t) for t in KeyType}


def eol(hours: float = 24) -> datetime.datetime:
    return datetime.datetime.now(UTC) + datetime.timedelta(hours=hours)


@pytest.mark.parametrize("key_type", list(KeyType))
@pytest.mark.parametrize("v1", [True, False])
def test_created_records_verify(keys: dict[KeyType, PrivateKey], key_type: KeyType, v1: bool) -> None:
    key = keys[key_type]
    raw = ipns.create(key, b"/ipfs/bafkqaaa", 7, eol(), datetime.timedelta(minutes=5), v1_compatible=v1)
    entry = ipns.verify(key.peer_id(), raw, NOW)
    assert (entry.value, entry.sequence, entry.ttl_ns) == (b"/ipfs/bafkqaaa", 7, 300 * 10**9)
    assert entry.pb.HasField("value") is v1
    # The key is embedded only when the name cannot inline it (RSA, ECDSA).
    assert bool(entry.pb.pubKey) is (key.peer_id().inline_public_key() is None)


def test_created_v1_signature_is_the_legacy_one(keys: dict[KeyType, PrivateKey]) -> None:
    key = keys[KeyType.Ed25519]
    pb = ipns.parse(ipns.create(key, b"/ipfs/x", 1, eol())).pb
    assert key.public_key().verify(pb.value + pb.validity + b"EOL", pb.signatureV1)


def test_created_data_is_canonical_dag_cbor(keys: dict[KeyType, PrivateKey]) -> None:
    raw = ipns.create(keys[KeyType.Ed25519], b"/ipfs/x", 1, datetime.datetime(2100, 1, 2, 3, 4, 5, 600, UTC))
    data = ipns.parse(raw).pb.data
    # RFC 7049 canonical order: shorter keys first, then bytewise.
    assert list(cbor2.loads(data)) == ["TTL", "Value", "Sequence", "Validity", "ValidityType"]
    assert cbor2.loads(data)["Validity"] == b"2100-01-02T03:04:05.0006Z"


def test_vector_data_round_trips_through_our_encoder() -> None:
    # The spec's V2-only vector was made by boxo: our decode → encode gives its exact bytes.
    _, raw = vector("k51qzi5uqu5dit2ku9mutlfgwyz8u730on38kd10m97m36bjt66my99hb6103f_v2")
    data = ipns.parse(raw).pb.data
    assert ipns.encode_dag_cbor(ipns.decode_dag_cbor(data)) == data


def resign(key: PrivateKey, pb: ipns_pb2.IpnsEntry, data: bytes) -> bytes:
    pb.data = data
    pb.signatureV2 = key.sign(ipns.SIGNATURE_V2_PREFIX + data)
    return pb.SerializeToString()


def fields(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "Value": b"/ipfs/x",
        "Validity": b"2100-01-01T00:00:00Z",
        "ValidityType": 0,
        "Sequence": 1,
        "TTL": 1,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _with_int_key() -> dict[object, object]:
    doc: dict[object, object] = {1: 2}
    doc.update(fields())
    return doc


class TestForgedAndMalformed:
    @pytest.fixture
    def key(self, keys: dict[KeyType, PrivateKey]) -> PrivateKey:
        return keys[KeyType.Ed25519]

    def test_tampered_data(self, key: PrivateKey) -> None:
        pb = ipns.parse(ipns.create(key, b"/ipfs/a", 1, eol(), v1_compatible=False)).pb
        pb.data = ipns.encode_dag_cbor(fields(Sequence=99))
        with pytest.raises(ipns.IpnsError, match="signatureV2"):
            ipns.verify(key.peer_id(), pb.SerializeToString(), NOW)

    def test_signed_by_another_key(self, key: PrivateKey, keys: dict[KeyType, PrivateKey]) -> None:
        raw = ipns.create(keys[KeyType.Secp256k1], b"/ipfs/a", 1, eol())
        with pytest.raises(ipns.IpnsError):
            ipns.verify(key.peer_id(), raw, NOW)

    def test_embedded_key_of_another_name(self, key: PrivateKey, keys: dict[KeyType, PrivateKey]) -> None:
        raw = ipns.create(keys[KeyType.ECDSA], b"/ipfs/a", 1, eol())
        with pytest.raises(ipns.IpnsError, match="pubKey does not belong"):
            ipns.verify(key.peer_id(), raw, NOW)

    def test_rsa_name_without_embedded_key(self, keys: dict[KeyType, PrivateKey]) -> None:
        rsa = keys[KeyType.RSA]
        raw = ipns.create(rsa, b"/ipfs/a", 1, eol(), embed_public_key=False)
        with pytest.raises(ipns.IpnsError, match="public key not found"):
            ipns.verify(rsa.peer_id(), raw, NOW)

    def test_expired(self, key: PrivateKey) -> None:
        raw = ipns.create(key, b"/ipfs/a", 1, eol(hours=-1))
        with pytest.raises(ipns.IpnsError, match="expired"):
            ipns.verify(key.peer_id(), raw, NOW)

    def test_expiry_follows_the_given_clock(self, key: PrivateKey) -> None:
        raw = ipns.create(key, b"/ipfs/a", 1, datetime.datetime(2030, 1, 1, tzinfo=UTC))
        ipns.verify(key.peer_id(), raw, 0)
        with pytest.raises(ipns.IpnsError, match="expired"):
            ipns.verify(key.peer_id(), raw, 1_900_000_000 * 10**9)

    def test_over_the_size_limit(self, key: PrivateKey) -> None:
        pb = ipns.parse(ipns.create(key, b"/ipfs/a", 1, eol(), v1_compatible=False)).pb
        raw = resign(key, pb, ipns.encode_dag_cbor(fields(_pad=b"x" * MAX_IPNS_RECORD_SIZE)))
        with pytest.raises(ipns.IpnsError, match="limit"):
            ipns.verify(key.peer_id(), raw, NOW)
        with pytest.raises(ValueError, match="limit"):
            ipns.create(key, b"x" * MAX_IPNS_RECORD_SIZE, 1, eol())

    def test_extension_fields_are_signed_and_accepted(self, key: PrivateKey) -> None:
        pb = ipns.parse(ipns.create(key, b"/ipfs/a", 1, eol(), v1_compatible=False)).pb
        raw = resign(key, pb, ipns.encode_dag_cbor(fields(_meta={"a": [1, -2, 1.5, None, True]})))
        assert ipns.verify(key.peer_id(), raw, NOW).fields["_meta"]["a"][2] == 1.5

    @pytest.mark.parametrize(
        ("field_name", "bad"),
        [("value", b"/ipfs/other"), ("validity", b"2100-01-01T00:00:01Z"), ("sequence", 2), ("ttl", 2)],
    )
    def test_v1_field_differs_from_signed_data(self, key: PrivateKey, field_name: str, bad: object) -> None:
        pb = ipns.parse(ipns.create(key, b"/ipfs/x", 1, datetime.datetime(2100, 1, 1, tzinfo=UTC), datetime.timedelta(0))).pb
        raw = resign(key, pb, ipns.encode_dag_cbor(fields(TTL=0)))
        ipns.verify(key.peer_id(), raw, NOW)  # consistent as built
        setattr(pb, field_name, bad)
        with pytest.raises(ipns.IpnsError, match=f"V1 field {field_name}"):
            ipns.verify(key.peer_id(), pb.SerializeToString(), NOW)

    @pytest.mark.parametrize(
        "data",
        [
            cbor2.dumps(fields()),  # keys not in canonical order
            bytes.fromhex("a5") + b"".join(  # Sequence as a non-minimal integer
                cbor2.dumps(k) + (b"\x18\x01" if k == "Sequence" else cbor2.dumps(v))
                for k, v in sorted(fields().items(), key=lambda kv: (len(kv[0]), kv[0]))
            ),
            ipns.encode_dag_cbor(fields()) + b"\x00",  # trailing bytes
            ipns.encode_dag_cbor(fields(_f=1.5))[:-9] + b"\xf9\x3e\x00",  # a 16-bit float
            cbor2.dumps(fields(_d=cbor2.CBORTag(1, 0)), canonical=True),  # a tag that is not a CID
            cbor2.dumps(fields(_b=2**70), canonical=True),  # a bignum
            cbor2.dumps(fields(_n=float("nan")), canonical=True),
            cbor2.dumps(_with_int_key(), canonical=True),  # a non-string map key
            ipns.encode_dag_cbor([1, 2]),  # not a map
            ipns.encode_dag_cbor(fields(Value="/ipfs/x")),  # Value as text, not bytes
            ipns.encode_dag_cbor(fields(Sequence=-1)),
            ipns.encode_dag_cbor(fields(TTL=None)),
            b"\xbf\xff",  # indefinite-length map
        ],
    )
    def test_data_that_is_not_the_canonical_ipns_document(self, key: PrivateKey, data: bytes) -> None:
        pb = ipns_pb2.IpnsEntry()
        with pytest.raises(ipns.IpnsError):
            ipns.verify(key.peer_id(), resign(key, pb, data), NOW)

    def test_unknown_validity_type(self, key: PrivateKey) -> None:
        raw = resign(key, ipns_pb2.IpnsEntry(), ipns.encode_dag_cbor(fields(ValidityType=1)))
        with pytest.raises(ipns.IpnsError, match="validity type"):
            ipns.verify(key.peer_id(), raw, NOW)

    @pytest.mark.parametrize("validity", [b"tomorrow", b"2100-02-30T00:00:00Z", b"2100-01-01T00:00:00", b""])
    def test_unparsable_validity(self, key: PrivateKey, validity: bytes) -> None:
        raw = resign(key, ipns_pb2.IpnsEntry(), ipns.encode_dag_cbor(fields(Validity=validity)))
        with pytest.raises(ipns.IpnsError, match="Validity"):
            ipns.verify(key.peer_id(), raw, NOW)

    def test_missing_signature(self, key: PrivateKey) -> None:
        pb = ipns.parse(ipns.create(key, b"/ipfs/a", 1, eol())).pb
        pb.ClearField("signatureV2")
        with pytest.raises(ipns.IpnsError, match="no signatureV2"):
            ipns.verify(key.peer_id(), pb.SerializeToString(), NOW)

    def test_not_a_protobuf(self, key: PrivateKey) -> None:
        with pytest.raises(ipns.IpnsError):
            ipns.verify(key.peer_id(), b"\xff\xff\xff", NOW)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_fail_cleanly(raw: bytes) -> None:
    name, _ = vector("k51qzi5uqu5dit2ku9mutlfgwyz8u730on38kd10m97m36bjt66my99hb6103f_v2")
    with pytest.raises(RecordError):
        ipns.verify(name, raw, NOW)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_data_field_fails_cleanly(data: bytes) -> None:
    try:
        ipns.parse(ipns_pb2.IpnsEntry(data=data, signatureV2=b"s").SerializeToString())
    except ipns.IpnsError:
        pass


class TestSelect:
    @pytest.fixture
    def key(self, keys: dict[KeyType, PrivateKey]) -> PrivateKey:
        return keys[KeyType.Ed25519]

    def test_higher_sequence_wins_over_later_eol(self, key: PrivateKey) -> None:
        older = ipns.create(key, b"/ipfs/a", 1, eol(40))
        newer = ipns.create(key, b"/ipfs/b", 2, eol(1))
        assert ipns.select([older, newer]) == 1
        assert ipns.select([newer, older]) == 0

    def test_later_eol_wins_on_equal_sequence(self, key: PrivateKey) -> None:
        early = ipns.create(key, b"/ipfs/a", 5, eol(1))
        late = ipns.create(key, b"/ipfs/a", 5, eol(2))
        assert ipns.select([early, late]) == 1

    def test_v2_wins_over_v1_only(self, key: PrivateKey) -> None:
        v2 = ipns.create(key, b"/ipfs/a", 1, eol(1))
        pb = ipns.parse(ipns.create(key, b"/ipfs/a", 9, eol(9))).pb
        pb.ClearField("signatureV2")
        assert ipns.select([pb.SerializeToString(), v2]) == 1

    def test_larger_bytes_break_a_tie(self, key: PrivateKey) -> None:
        when = eol(3)
        a = ipns.create(key, b"/ipfs/a", 1, when)
        b = ipns.create(key, b"/ipfs/b", 1, when)
        larger = max(a, b)
        assert [a, b][ipns.select([a, b])] == larger
        assert [b, a][ipns.select([b, a])] == larger

    def test_unparsable_value_is_an_error(self, key: PrivateKey) -> None:
        with pytest.raises(ipns.IpnsError):
            ipns.select([ipns.create(key, b"/ipfs/a", 1, eol()), b"junk"])
