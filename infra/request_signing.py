"""Request signing by API clients: the public keys they register and how a signature is checked.

A client that registered a public key signs every request it sends to the
trigger gateway with the matching private key, in two headers:

    X-Points-Timestamp: <unix seconds>
    X-Points-Request-Signature: <base64 of the signature>

The signature covers the canonical string (UTF-8, lines joined by ``\\n``)::

    <METHOD>
    <path?query>          the request target exactly as sent
    <timestamp>           the X-Points-Timestamp value
    <hex SHA-256 of the raw body>   (of zero bytes for a GET)

RSA keys (2048 to 8192 bits) sign with RSASSA-PSS, SHA-256, MGF1 with SHA-256
and a 32-byte salt; EC keys (P-256 only) sign with ECDSA over SHA-256, the
signature DER-encoded. One algorithm per key type, so nothing in the request
has to name it.

Both the rules service (which validates a key when an operator registers it)
and the gateway (which verifies signatures) use this module.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

TIMESTAMP_HEADER = "X-Points-Timestamp"
SIGNATURE_HEADER = "X-Points-Request-Signature"
DEFAULT_WINDOW_SECONDS = 300

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
#: Far above any accepted key's PEM (an 8192-bit RSA key is about 1.5 KB).
MAX_PEM_CHARACTERS = 16_384
PSS_SALT_BYTES = 32

SigningPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class InvalidSigningKey(ValueError):
    """A public key the platform does not accept; the message says why."""


def load_signing_key(pem: str) -> SigningPublicKey:
    """The public key in ``pem``, if it is one the platform accepts for request signing."""
    if len(pem) > MAX_PEM_CHARACTERS:
        raise InvalidSigningKey(f"the PEM text is longer than {MAX_PEM_CHARACTERS} characters")
    if "PRIVATE KEY-----" in pem:
        raise InvalidSigningKey(
            "this is a private key: register the public key only, and keep the private key "
            "with the client"
        )
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidSigningKey(
            "not a PEM public key; expected a '-----BEGIN PUBLIC KEY-----' block"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise InvalidSigningKey(
                f"an RSA key of {key.key_size} bits; RSA keys must have "
                f"{MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidSigningKey(
                f"an EC key on curve {key.curve.name}; only P-256 (secp256r1) is accepted"
            )
        return key
    raise InvalidSigningKey(
        f"{type(key).__name__.lstrip('_').removesuffix('PublicKey')} keys are not accepted; "
        f"use RSA ({MIN_RSA_BITS} bits or more) or EC P-256"
    )


def public_pem(key: SigningPublicKey) -> str:
    """The key as a PEM SubjectPublicKeyInfo block, the one form the platform stores."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def fingerprint(key: SigningPublicKey) -> str:
    """``SHA256:<base64>`` of the key's DER SubjectPublicKeyInfo, to tell keys apart."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


@functools.lru_cache(maxsize=4096)
def cached_signing_key(pem: str) -> SigningPublicKey:
    """The loaded key for a stored PEM, parsed once per process rather than per request.

    Keyed by the PEM text itself, so a replaced key is simply another entry and
    the old one can never verify a request for the new one.
    """
    return load_signing_key(pem)


def canonical_request(method: str, target: str, timestamp: str, body: bytes) -> bytes:
    """The bytes a request signature covers."""
    body_digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{timestamp}\n{body_digest}".encode()


def signature_matches(key: SigningPublicKey, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` signs ``message`` with the private half of ``key``."""
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature,
                message,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_BYTES),
                hashes.SHA256(),
            )
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
