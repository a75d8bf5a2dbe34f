"""Certificates for the TLS tests: good ones from ``tlscert.make_certificate`` and bad
ones built here with ``cryptography``, each wrong in one way."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dhtstore.crypto.keys import PrivateKey
from dhtstore.network.tlscert import LIBP2P_EXTENSION_OID, SIGNATURE_PREFIX, SignedKey

NOW = datetime.datetime.now(datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def build(
    identity: PrivateKey,
    *,
    signed_key: bytes | None = None,  # the extension's value, instead of a correct one
    host_key_signs: bytes | None = None,  # what the host key signs, instead of the SPKI
    with_extension: bool = True,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    not_before: datetime.datetime = NOW - HOUR,
    not_after: datetime.datetime = NOW + 24 * HOUR,
    signer: ec.EllipticCurvePrivateKey | None = None,  # signs the certificate instead of its own key
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = identity.sign(SIGNATURE_PREFIX + spki if host_key_signs is None else host_key_signs)
    value = signed_key if signed_key is not None else asn1.encode_der(SignedKey(identity.public_key().to_protobuf(), signature))
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.SERIAL_NUMBER, "1")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if with_extension:
        builder = builder.add_extension(x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, value), critical=True)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return key, builder.sign(signer or key, hashes.SHA256())
