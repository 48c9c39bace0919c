"""Sealing the token issuer's private signing keys at rest.

A copy of ``rules.signing_keys`` (a backup, a replica, a support dump) must not
be enough to mint access tokens. Each private key is stored sealed with
AES-256-GCM under a key derived from ``RULES_SIGNING_KEY_ENCRYPTION_KEY``, which
lives only in the service's environment; the key id is the associated data, so
a sealed key copied onto another row does not open. Public keys (the JWKS) stay
in the clear.

Stored form: ``v1.<urlsafe base64 of nonce || ciphertext>``.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infra.errors import StartupError

#: Used only in development mode; the settings refuse it anywhere else.
DEVELOPMENT_KEY_ENCRYPTION_KEY = "development-only-signing-key-encryption-key"
SEALED_PREFIX = "v1."
_NONCE_BYTES = 12
_DERIVATION_INFO = b"points-platform rules signing-key encryption v1"
_PLAIN_PEM_PREFIX = "-----BEGIN"


class KeyVault:
    """Seals and opens private signing keys with the platform's key-encryption key."""

    def __init__(self, key_encryption_key: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO
        ).derive(key_encryption_key.encode())
        self._aead = AESGCM(derived)

    def seal(self, kid: str, private_key: ec.EllipticCurvePrivateKey) -> str:
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, der, kid.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open(self, kid: str, stored: str) -> ec.EllipticCurvePrivateKey:
        """The private key of ``kid``; refuses, naming the setting, if it cannot be opened."""
        if is_plain_pem(stored):
            key = serialization.load_pem_private_key(stored.encode(), password=None)
        else:
            key = serialization.load_der_private_key(self._decrypt(kid, stored), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise StartupError(f"signing key {kid} is not an elliptic-curve key")
        return key

    def _decrypt(self, kid: str, stored: str) -> bytes:
        if not stored.startswith(SEALED_PREFIX):
            raise StartupError(f"signing key {kid} is stored in an unknown format")
        sealed = base64.urlsafe_b64decode(stored.removeprefix(SEALED_PREFIX))
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, kid.encode())
        except InvalidTag:
            raise StartupError(
                f"signing key {kid} cannot be opened: RULES_SIGNING_KEY_ENCRYPTION_KEY is not "
                "the key it was sealed with (restore that key, or rotate signing keys with "
                "`points keys rotate` after restoring it)"
            ) from None


def is_plain_pem(stored: str) -> bool:
    """Whether a stored key predates sealing (written in the clear by an older release)."""
    return stored.startswith(_PLAIN_PEM_PREFIX)
