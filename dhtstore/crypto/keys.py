"""libp2p identity keys: the PublicKey/PrivateKey protobuf, signing and verification.

Every primitive comes from ``cryptography``. The protobuf (``KeyType Type = 1; bytes
Data = 2``) is encoded deterministically as the peer-ids spec requires and parsed
strictly: anything else (field order, extra fields, non-minimal varints) is refused,
because the peer id is the hash of these exact bytes.

Data formats (libp2p peer-ids spec):
  Ed25519   public: raw 32 bytes; private: 64 bytes seed‖public (legacy 96 accepted)
  RSA       public: DER PKIX; private: DER PKCS#1; signatures PKCS#1 v1.5 over SHA-256
  Secp256k1 public: 33-byte compressed point; private: raw 32 bytes; DER ECDSA/SHA-256
  ECDSA     public: DER PKIX; private: DER (SEC1); DER ECDSA/SHA-256
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .. import varint
from ..peerid import PeerId

MAX_KEY_DATA = 8 * 1024  # an RSA-16384 PKIX key is ~2 KiB; anything far larger is abuse
MIN_RSA_BITS = 2048  # go-libp2p's MinRsaKeyBits
MAX_RSA_BITS = 8192  # go-libp2p's maxRsaKeyBits: verification cost grows with the square
# Public exponents: odd, 3 to 2^31-1, as Go's crypto/rsa takes them (a 3064-bit exponent
# made one verification cost ~90 times as much as e = 65537).
MIN_RSA_EXPONENT = 3
MAX_RSA_EXPONENT = 2**31 - 1
# The curves go-libp2p's ECDSA keys can be on (x509.ParsePKIXPublicKey's NIST curves).
ECDSA_CURVES = (ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class KeyType(enum.IntEnum):
    RSA = 0
    Ed25519 = 1
    Secp256k1 = 2
    ECDSA = 3


class KeyFormatError(ValueError):
    """A key that does not parse, is of an unsupported type, or is too weak."""


# The ``cryptography`` key objects behind each KeyType (Secp256k1 and ECDSA are both EC).
_PublicKeyObject = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_PrivateKeyObject = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _encode(key_type: KeyType, data: bytes) -> bytes:
    return b"\x08" + varint.encode(int(key_type)) + b"\x12" + varint.encode(len(data)) + data


def _decode(blob: bytes) -> tuple[KeyType, bytes]:
    try:
        if blob[:1] != b"\x08":
            raise KeyFormatError("key protobuf must start with field 1 (Type)")
        type_value, pos = varint.decode_exact(blob, 1)
        if blob[pos : pos + 1] != b"\x12":
            raise KeyFormatError("key protobuf must have field 2 (Data) after Type")
        length, pos = varint.decode_exact(blob, pos + 1)
    except (varint.VarintError, IndexError) as exc:
        raise KeyFormatError(f"malformed key protobuf: {exc}") from None
    if length > MAX_KEY_DATA:
        raise KeyFormatError(f"key data of {length} bytes is over the {MAX_KEY_DATA} limit")
    data = blob[pos : pos + length]
    if len(data) != length or pos + length != len(blob):
        raise KeyFormatError("key protobuf length does not match its data")
    try:
        return KeyType(type_value), bytes(data)
    except ValueError:
        raise KeyFormatError(f"unknown key type {type_value}") from None


def _check_rsa(bits: int, exponent: int) -> None:
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise KeyFormatError(f"RSA key of {bits} bits is outside {MIN_RSA_BITS}-{MAX_RSA_BITS}")
    if not (MIN_RSA_EXPONENT <= exponent <= MAX_RSA_EXPONENT and exponent % 2):
        raise KeyFormatError(f"RSA public exponent of {exponent.bit_length()} bits is not an odd number in 3..2^31-1")


def _check_curve(curve: ec.EllipticCurve) -> None:
    if not isinstance(curve, ECDSA_CURVES):
        raise KeyFormatError(f"ECDSA key on {curve.name}, not one of P-224, P-256, P-384, P-521")


@dataclass(frozen=True, eq=False)
class PublicKey:
    key_type: KeyType
    data: bytes
    _key: _PublicKeyObject

    @classmethod
    def from_protobuf(cls, blob: bytes) -> PublicKey:
        key_type, data = _decode(bytes(blob))
        return cls.from_type_and_data(key_type, data)

    @classmethod
    def from_type_and_data(cls, key_type: KeyType, data: bytes) -> PublicKey:
        key: _PublicKeyObject
        try:
            if key_type is KeyType.Ed25519:
                key = ed25519.Ed25519PublicKey.from_public_bytes(data)
            elif key_type is KeyType.Secp256k1:
                key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
            else:
                loaded = serialization.load_der_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"invalid {key_type.name} public key: {exc}") from None
        if key_type is KeyType.RSA:
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise KeyFormatError("RSA key data is not an RSA key")
            _check_rsa(loaded.key_size, loaded.public_numbers().e)
            key = loaded
        elif key_type is KeyType.ECDSA:
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise KeyFormatError("ECDSA key data is not an EC key")
            _check_curve(loaded.curve)
            key = loaded
        return cls(key_type, data, key)

    def to_protobuf(self) -> bytes:
        return _encode(self.key_type, self.data)

    def peer_id(self) -> PeerId:
        return PeerId.from_public_key_bytes(self.to_protobuf())

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is valid for ``message``; never raises on bad input."""
        key = self._key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.to_protobuf() == other.to_protobuf()

    def __hash__(self) -> int:
        return hash(self.to_protobuf())


@dataclass(frozen=True, eq=False)
class PrivateKey:
    key_type: KeyType
    _key: _PrivateKeyObject

    @classmethod
    def generate(cls, key_type: KeyType = KeyType.Ed25519, rsa_bits: int = 2048) -> PrivateKey:
        if key_type is KeyType.Ed25519:
            return cls(key_type, ed25519.Ed25519PrivateKey.generate())
        if key_type is KeyType.RSA:
            return cls(key_type, rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits))
        if key_type is KeyType.Secp256k1:
            return cls(key_type, ec.generate_private_key(ec.SECP256K1()))
        return cls(key_type, ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_protobuf(cls, blob: bytes) -> PrivateKey:
        key_type, data = _decode(bytes(blob))
        key: _PrivateKeyObject
        try:
            if key_type is KeyType.Ed25519:
                if len(data) not in (64, 96):
                    raise KeyFormatError(f"Ed25519 private key of {len(data)} bytes")
                key = ed25519.Ed25519PrivateKey.from_private_bytes(data[:32])
            elif key_type is KeyType.Secp256k1:
                key = ec.derive_private_key(int.from_bytes(data, "big"), ec.SECP256K1())
            else:
                loaded = serialization.load_der_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"invalid {key_type.name} private key: {exc}") from None
        if key_type is KeyType.RSA:
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise KeyFormatError("RSA key data is not an RSA key")
            _check_rsa(loaded.key_size, loaded.private_numbers().public_numbers.e)
            key = loaded
        elif key_type is KeyType.ECDSA:
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise KeyFormatError("ECDSA key data is not an EC key")
            _check_curve(loaded.curve)
            key = loaded
        return cls(key_type, key)

    def to_protobuf(self) -> bytes:
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            data = seed + self.public_key().data
        elif self.key_type is KeyType.Secp256k1 and isinstance(key, ec.EllipticCurvePrivateKey):
            data = key.private_numbers().private_value.to_bytes(32, "big")
        else:  # RSA: DER PKCS#1; ECDSA: DER SEC1
            data = key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        return _encode(self.key_type, data)

    def public_key(self) -> PublicKey:
        pub = self._key.public_key()
        if self.key_type is KeyType.Ed25519:
            data = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        elif self.key_type is KeyType.Secp256k1:
            data = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        else:
            data = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return PublicKey(self.key_type, data, pub)

    def peer_id(self) -> PeerId:
        return self.public_key().peer_id()

    def sign(self, message: bytes) -> bytes:
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(message, ec.ECDSA(hashes.SHA256()))

