"""The libp2p TLS certificate (libp2p specs, tls/tls.md "Peer Authentication"): made
fresh for each connection, and checked when a peer presents one. Pure: no I/O, no TLS.

The certificate is self-signed by a throwaway ECDSA P-256 key, never by the host key
(which may be of a type X.509 cannot sign with). It carries the libp2p Public Key
Extension (OID 1.3.6.1.4.1.53594.1.1)::

    SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }

``publicKey`` is the host key as its libp2p protobuf; ``signature`` is the host key's
signature over ``"libp2p-tls-handshake:"`` ‖ the certificate's DER SubjectPublicKeyInfo.
What go-libp2p does for the rest: a random serial, the subject's serialNumber, valid
from an hour ago for 100 years, the extension not marked critical, no other extension.

``verify_certificate`` refuses, with ``CertificateError`` (a ProtocolViolation): a
certificate that does not parse, is not yet or no longer valid, whose self-signature is
wrong, that lacks the extension or has it twice or malformed, that has a critical
extension we do not know, whose host key does not parse or is of an unknown type, or
whose host-key signature is wrong. It returns the host key (and so the peer id).
DER comes from ``cryptography`` (its x509 and declarative ``asn1``), never by hand.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from ..crypto.keys import KeyFormatError, PrivateKey, PublicKey
from ..errors import ProtocolViolation

LIBP2P_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
VALID_FROM_BEFORE_NOW = datetime.timedelta(hours=1)  # clock skew allowance, as go-libp2p
VALIDITY = datetime.timedelta(days=100 * 365)  # go-libp2p's certValidityPeriod
MAX_CERTIFICATE_LENGTH = 16 * 1024  # ours is ~400 bytes; an RSA-4096 host key ~1.5 KiB

# Critical extensions whose meaning we know and that do not stand in the way of a
# self-signed end-entity certificate (what Go's x509 handles, in the part a libp2p
# certificate could carry); any other critical extension refuses the certificate.
UNDERSTOOD_CRITICAL = frozenset(
    {
        LIBP2P_EXTENSION_OID,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)

__all__ = [
    "LIBP2P_EXTENSION_OID",
    "CertificateError",
    "SignedKey",
    "make_certificate",
    "verify_certificate",
]


class CertificateError(ProtocolViolation):
    """The peer's certificate does not authenticate a libp2p peer."""


@asn1.sequence
@dataclass
class SignedKey:
    public_key: bytes  # the host key's libp2p protobuf
    signature: bytes


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_certificate(
    identity: PrivateKey, now: datetime.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh certificate key and the self-signed certificate naming ``identity``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signed = SignedKey(identity.public_key().to_protobuf(), identity.sign(SIGNATURE_PREFIX + spki))
    serial = secrets.randbits(63) + 1  # positive and non-zero, as RFC 5280 asks
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - VALID_FROM_BEFORE_NOW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, asn1.encode_der(signed)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def verify_certificate(der: bytes, now: datetime.datetime | None = None) -> PublicKey:
    """The host key a peer's DER certificate authenticates; CertificateError otherwise."""
    if len(der) > MAX_CERTIFICATE_LENGTH:
        raise CertificateError(f"certificate of {len(der)} bytes is over the {MAX_CERTIFICATE_LENGTH} limit")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"certificate does not parse: {exc}") from None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}")
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"certificate's self-signature is invalid: {type(exc).__name__} {exc}") from None
    signed = _libp2p_extension(cert)
    try:
        public_key = PublicKey.from_protobuf(signed.public_key)
    except KeyFormatError as exc:
        raise CertificateError(f"certificate's host key: {exc}") from None
    try:
        spki = _spki(cert)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"certificate's key: {exc}") from None
    if not public_key.verify(SIGNATURE_PREFIX + spki, signed.signature):
        raise CertificateError("the host key's signature over the certificate key is invalid")
    return public_key


def _libp2p_extension(cert: x509.Certificate) -> SignedKey:
    try:
        extensions = list(cert.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateError(f"certificate extensions do not parse: {exc}") from None
    found: x509.Extension[x509.ExtensionType] | None = None
    for ext in extensions:
        if ext.oid == LIBP2P_EXTENSION_OID:
            found = ext
        elif ext.critical and ext.oid not in UNDERSTOOD_CRITICAL:
            raise CertificateError(f"certificate has an unknown critical extension {ext.oid.dotted_string}")
    if found is None or not isinstance(found.value, x509.UnrecognizedExtension):
        raise CertificateError("certificate lacks the libp2p public key extension")
    try:
        return asn1.decode_der(SignedKey, found.value.value)
    except ValueError as exc:
        raise CertificateError(f"libp2p extension does not parse: {exc}") from None
