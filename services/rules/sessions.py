"""Console cookie sessions and their CSRF tokens.

The browser console signs in once and then rides on an HttpOnly cookie holding
a random session id. Only the id's SHA-256 is stored, so reading the table does
not let anyone sign in. Because a browser attaches the cookie to every request,
including ones another site makes it send, each state-changing request must
also carry a CSRF token the page read from this service: a random nonce and its
HMAC under a secret of this session alone, so a token is worthless for any
other session and a fresh one can be handed out at any time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.rules import sign_in_repository

COOKIE_NAME = "points_console_session"
CSRF_HEADER = "X-CSRF-Token"
#: Methods that change something, and so need the CSRF token when the cookie authenticates.
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class ConsoleSession:
    """A live session: whose it is, and the secret its CSRF tokens are signed with."""

    id_hash: bytes
    user_id: str
    org_id: str
    role: str
    email: str
    expires_at: datetime
    csrf_secret: bytes

    def csrf_token(self) -> str:
        """A new token for this session; every one issued stays valid while the session lives."""
        nonce = secrets.token_bytes(16)
        return f"{_b64(nonce)}.{_b64(self._mac(nonce))}"

    def accepts_csrf_token(self, token: str | None) -> bool:
        nonce_text, dot, mac_text = (token or "").partition(".")
        if not dot:
            return False
        try:
            nonce, mac = _unb64(nonce_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            return False
        return len(nonce) == 16 and hmac.compare_digest(mac, self._mac(nonce))

    def _mac(self, nonce: bytes) -> bytes:
        return hmac.new(self.csrf_secret, nonce + self.id_hash, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_session_id(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


async def open_session(
    connection: asyncpg.Connection, user: asyncpg.Record, lifetime: timedelta
) -> tuple[str, ConsoleSession]:
    """A new session for ``user``, in the caller's transaction: the id for the cookie
    (never stored) and the session."""
    session_id = secrets.token_urlsafe(32)
    id_hash = hash_session_id(session_id)
    csrf_secret = secrets.token_bytes(32)
    await sign_in_repository.delete_expired_console_sessions(connection, user["id"])
    await sign_in_repository.insert_console_session(
        connection, id_hash, user["id"], csrf_secret, lifetime
    )
    session = await find_session(connection, session_id)
    assert session is not None, "a session just opened is live"
    return session_id, session


async def find_session(connection: asyncpg.Connection, session_id: str) -> ConsoleSession | None:
    """The live session ``session_id`` names (marking it seen), or None."""
    id_hash = hash_session_id(session_id)
    row = await sign_in_repository.touch_console_session(connection, id_hash)
    if row is None:
        return None
    return ConsoleSession(
        id_hash=id_hash,
        user_id=row["user_id"],
        org_id=row["org_id"],
        role=row["role"],
        email=row["email"],
        expires_at=row["expires_at"],
        csrf_secret=row["csrf_secret"],
    )


async def close_session(connection: asyncpg.Connection, session: ConsoleSession) -> None:
    await sign_in_repository.delete_console_session(connection, session.id_hash)
