"""Identity keys are bounded before any signature is checked (issue 12): RSA sizes and
exponents as go-libp2p and Go's crypto/rsa take them, ECDSA on go's curves only."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dhtstore.crypto.keys import KeyFormatError, KeyType, PrivateKey, PublicKey


def rsa_der(bits: int, exponent: int) -> bytes:
    modulus = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    return rsa.RSAPublicNumbers(exponent, modulus).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(("bits", "exponent"), [(2048, 65537), (8192, 65537), (4096, 3), (3072, 2**31 - 1)])
def test_rsa_keys_go_accepts_are_accepted(bits: int, exponent: int) -> None:
    assert PublicKey.from_type_and_data(KeyType.RSA, rsa_der(bits, exponent)).key_type is KeyType.RSA


@pytest.mark.parametrize(
    ("bits", "exponent", "reason"),
    [
        (1024, 65537, "1024 bits"),
        (8200, 65537, "8200 bits"),
        (16384, 65537, "16384 bits"),
        (4096, 2**31 + 1, "exponent"),
        (4096, secrets.randbits(3064) | (1 << 3063) | 1, "exponent of 3064 bits"),
    ],
    ids=["rsa-1024", "rsa-8200", "rsa-16384", "e=2^31+1", "e of 3064 bits"],
)
def test_rsa_keys_out_of_bounds_are_refused(bits: int, exponent: int, reason: str) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        PublicKey.from_type_and_data(KeyType.RSA, rsa_der(bits, exponent))


def test_ecdsa_keys_only_on_the_nist_curves_go_parses() -> None:
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
        der = ec.generate_private_key(curve).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert PublicKey.from_type_and_data(KeyType.ECDSA, der).key_type is KeyType.ECDSA
    for curve in (ec.SECP256K1(), ec.BrainpoolP256R1()):
        key = ec.generate_private_key(curve)
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        with pytest.raises(KeyFormatError, match="not one of P-224"):
            PublicKey.from_type_and_data(KeyType.ECDSA, der)
        private = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        with pytest.raises(KeyFormatError):
            PrivateKey.from_protobuf(b"\x08\x03\x12" + bytes([len(private)]) + private)


def test_a_key_on_a_curve_cryptography_does_not_know_is_a_format_error() -> None:
    # PKIX EC key on secp112r1 (1.3.132.0.6): cryptography raises UnsupportedAlgorithm
    point = b"\x04" + secrets.token_bytes(28)
    der = bytes.fromhex("3032301006072a8648ce3d020106052b81040006031e00") + point
    with pytest.raises(KeyFormatError, match="invalid ECDSA public key"):
        PublicKey.from_type_and_data(KeyType.ECDSA, der)
