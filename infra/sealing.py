"""Sealing a secret that must cross services without being readable on the way.

An invitation's token leaves the rules service in an event, waits in the
notifier's database until the e-mail is sent, and is readable only where the
message is composed. It travels sealed with AES-256-GCM under a key derived
from a platform key both services hold (``INVITATION_SEALING_KEY``); what it
belongs to (an invitation id) is the associated data, so a sealed token copied
onto another invitation does not open.

Sealed form: ``v1.<urlsafe base64 of nonce || ciphertext>``.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Used only in development mode; the settings refuse it anywhere else.
DEVELOPMENT_SEALING_KEY = "development-only-invitation-sealing-key"
SEALED_PREFIX = "v1."
_NONCE_BYTES = 12


class CannotOpen(ValueError):
    """The sealed text is malformed, or was sealed under another key or for another subject."""


class Sealer:
    """Seals and opens short secrets under a key derived from ``key`` for ``purpose``."""

    def __init__(self, key: str, purpose: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=f"points-platform {purpose} sealing v1".encode(),
        ).derive(key.encode())
        self._aead = AESGCM(derived)

    def seal(self, subject: str, secret: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, secret.encode(), subject.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open(self, subject: str, sealed: str) -> str:
        """The secret sealed for ``subject``; :class:`CannotOpen` otherwise."""
        if not sealed.startswith(SEALED_PREFIX):
            raise CannotOpen("not a sealed secret")
        try:
            raw = base64.urlsafe_b64decode(sealed.removeprefix(SEALED_PREFIX))
            nonce, ciphertext = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
            return self._aead.decrypt(nonce, ciphertext, subject.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError) as error:
            raise CannotOpen("the secret does not open with this key for this subject") from error


def invitation_sealer(key: str) -> Sealer:
    """The sealer of invitation tokens, between the rules service and the notifier."""
    return Sealer(key, "invitation-token")
