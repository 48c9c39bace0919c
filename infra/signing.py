"""Callback signatures and the derivation of callback-signing secrets.

Callbacks carry ``X-Points-Signature: t=<unix seconds>,v1=<hex>``, where the
hex is HMAC-SHA256 over ``"<t>.<raw body>"`` keyed with the client's
callback-signing secret. Receivers recompute it and refuse stale timestamps.

Signing secrets are never stored. Each client has a random, public salt
(carried on ``clients.lifecycle.v1``); the secret is
HMAC-SHA256(platform signing key, ``client_id:salt``), so the rules service
can show it once at creation and the notifier can recompute it to sign,
while neither the database nor the event log holds it. Rotating the secret
means drawing a new salt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "X-Points-Signature"
EVENT_ID_HEADER = "X-Points-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


def new_salt() -> str:
    return secrets.token_urlsafe(16)


def derive_signing_secret(platform_key: str, client_id: str, salt: str) -> str:
    digest = hmac.new(
        platform_key.encode(), f"{client_id}:{salt}".encode(), hashlib.sha256
    ).digest()
    return "whsec_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _mac(secret: str, body: bytes, moment: int) -> str:
    return hmac.new(secret.encode(), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()


def sign(*secrets: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed at ``timestamp`` (now by default): one ``v1=``
    per secret, so during a secret's rotation either the new or the old one verifies."""
    moment = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={moment}", *(f"v1={_mac(secret, body, moment)}" for secret in secrets)])


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: int | None = None,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds."""
    try:
        fields = [part.split("=", 1) for part in header.split(",")]
        [moment] = [int(value) for name, value in fields if name == "t"]
    except ValueError:  # no t, two of them, or not a number
        return False
    current = int(time.time()) if now is None else now
    if abs(current - moment) > tolerance:
        return False
    expected = _mac(secret, body, moment)
    return any(hmac.compare_digest(expected, value) for name, value in fields if name == "v1")


#: The platform signing key `points dev` and tests use; refused outside development.
DEVELOPMENT_SIGNING_KEY = "development-only-callback-signing-key"
