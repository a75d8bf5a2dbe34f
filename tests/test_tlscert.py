"""The libp2p TLS certificate: the spec's test vectors (libp2p specs tls/tls.md), our
own certificates for every key type, and certificates wrong in one way each."""

from __future__ import annotations

import datetime

import pytest
from certs import HOUR, NOW, build, der
from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives.asymmetric import ec

from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.errors import ProtocolViolation
from dhtstore.network.tlscert import (
    LIBP2P_EXTENSION_OID,
    CertificateError,
    SignedKey,
    make_certificate,
    verify_certificate,
)
from dhtstore.peerid import PeerId

# tls/tls.md "Test vectors": (certificate hex, the peer id it authenticates).
VECTORS = {
    "Ed25519": (
        "308201ae30820156a0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea37c307a3078060a2b0601040183a25a0101046a3068042408011220a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b90440d90d2769db992d5e6195dbb08e706b6651e024fda6cfb8846694a435519941cac215a8207792e42849cccc6cd8136c6e4bde92a58c5e08cfd4206eb5fe0bf909300a06082a8648ce3d0403020346003043021f50f6b6c52711a881778718238f650c9fb48943ae6ee6d28427dc6071ae55e702203625f116a7a454db9c56986c82a25682f7248ea1cb764d322ea983ed36a31b77",
        "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv",
    ),
    "ECDSA": (
        "308201f63082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f2044730450220064ea8124774caf8f50e57f436aa62350ce652418c019df5d98a3ac666c9386a022100aa59d704a931b5f72fb9222cb6cc51f954d04a4e2e5450f8805fe8918f71eaae300a06082a8648ce3d04030203470030440220799395b0b6c1e940a7e4484705f610ab51ed376f19ff9d7c16757cfbf61b8d4302206205c03fbb0f95205c779be86581d3e31c01871ad5d1f3435bcf375cb0e5088a",
        "QmfXbAwNjJLXfesgztEHe8HwgVDCMMpZ9Eax1HYq6hn9uE",
    ),
    "secp256k1": (
        "308201ba3082015fa0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea38184308181307f060a2b0601040183a25a01010471306f0425080212210206dc6968726765b820f050263ececf7f71e4955892776c0970542efd689d2382044630440220145e15a991961f0d08cd15425bb95ec93f6ffa03c5a385eedc34ecf464c7a8ab022026b3109b8a3f40ef833169777eb2aa337cfb6282f188de0666d1bcec2a4690dd300a06082a8648ce3d0403020349003046022100e1a217eeef9ec9204b3f774a08b70849646b6a1e6b8b27f93dc00ed58545d9fe022100b00dafa549d0f03547878338c7b15e7502888f6d45db387e5ae6b5d46899cef0",
        "16Uiu2HAkutTMoTzDw1tCvSRtu6YoixJwS46S1ZFxW8hSx9fWHiPs",
    ),
}
# "This certificate has a mismatch between the Peer ID that it claims to authenticate vs
# the key that was used to sign it."
INVALID_VECTOR = "308201f73082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f204473045022100bb6e03577b7cc7a3cd1558df0da2b117dfdcc0399bc2504ebe7de6f65cade72802206de96e2a5be9b6202adba24ee0362e490641ac45c240db71fe955f2c5cf8df6e300a06082a8648ce3d0403020348003045022100e847f267f43717358f850355bdcabbefb2cfbf8a3c043b203a14788a092fe8db022027c1d04a2d41fd6b57a7e8b3989e470325de4406e52e084e34a3fd56eef0d0df"

IDENTITY = PrivateKey.generate()


@pytest.mark.parametrize("key_type", VECTORS)
def test_spec_vectors_authenticate_their_peer_id(key_type: str) -> None:
    cert_hex, peer_id = VECTORS[key_type]
    public_key = verify_certificate(bytes.fromhex(cert_hex))
    assert public_key.key_type.name.lower() == key_type.lower()
    assert public_key.peer_id() == PeerId.from_string(peer_id)


def test_spec_invalid_vector_is_refused() -> None:
    with pytest.raises(CertificateError, match="signature over the certificate key"):
        verify_certificate(bytes.fromhex(INVALID_VECTOR))


@pytest.mark.parametrize("key_type", list(KeyType))
def test_our_certificates_round_trip_for_every_key_type(key_type: KeyType) -> None:
    identity = PrivateKey.generate(key_type)
    key, cert = make_certificate(identity)
    assert verify_certificate(der(cert)).peer_id() == identity.peer_id()
    # A fresh P-256 key each time, never the host key; the extension alone, as go-libp2p.
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert make_certificate(identity)[1].public_key() != cert.public_key()
    assert [e.oid for e in cert.extensions] == [LIBP2P_EXTENSION_OID]
    assert cert.not_valid_before_utc < NOW < cert.not_valid_after_utc


def unknown_key_type() -> bytes:
    return asn1.encode_der(SignedKey(b"\x08\x09\x12\x01\x00", b"sig"))  # KeyType 9


BAD = {
    "no extension": (dict(with_extension=False), "lacks the libp2p public key extension"),
    "bad host-key signature": (dict(host_key_signs=b"something else"), "signature over the certificate key"),
    "unknown host key type": (dict(signed_key=unknown_key_type()), "unknown key type 9"),
    "unparsable host key": (dict(signed_key=asn1.encode_der(SignedKey(b"\x08\x01\x12\x03abc", b"s"))), "host key"),
    "malformed extension": (dict(signed_key=b"\x30\x03\x04\x01"), "libp2p extension does not parse"),
    "extension of one field": (dict(signed_key=b"\x30\x03\x04\x01x"), "libp2p extension does not parse"),
    "expired": (dict(not_before=NOW - 48 * HOUR, not_after=NOW - HOUR), "expired"),
    "not yet valid": (dict(not_before=NOW + HOUR, not_after=NOW + 48 * HOUR), "not valid before"),
    "unknown critical extension": (
        dict(extra=[(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True)]),
        "unknown critical extension 1.3.6.1.4.1.99999.1",
    ),
    "self-signature by another key": (dict(signer=ec.generate_private_key(ec.SECP256R1())), "self-signature"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_certificates_are_refused_as_protocol_errors(case: str) -> None:
    kwargs, message = BAD[case]
    _, cert = build(IDENTITY, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(CertificateError, match=message) as refused:
        verify_certificate(der(cert))
    assert isinstance(refused.value, ProtocolViolation)


def test_unknown_non_critical_extensions_are_ignored_and_known_critical_ones_accepted() -> None:
    extra = [
        (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
    ]
    _, cert = build(IDENTITY, extra=extra)
    assert verify_certificate(der(cert)).peer_id() == IDENTITY.peer_id()


def test_validity_is_checked_at_the_given_time() -> None:
    _, cert = make_certificate(IDENTITY)
    verify_certificate(der(cert), now=NOW + datetime.timedelta(days=365))
    with pytest.raises(CertificateError, match="not valid before"):
        verify_certificate(der(cert), now=NOW - 2 * HOUR)


@pytest.mark.parametrize("blob", [b"", b"\x30", b"not a certificate", b"\x30\x82\xff\xff" + b"\x00" * 100])
def test_garbage_is_refused(blob: bytes) -> None:
    with pytest.raises(CertificateError):
        verify_certificate(blob)


def test_oversized_certificate_is_refused_before_parsing() -> None:
    with pytest.raises(CertificateError, match="over the"):
        verify_certificate(b"\x30" * 20_000)
