"""The SQL of signing in: the sign-in throttle's counters and the console's sessions.

Apart from :mod:`services.rules.repository` because only
:mod:`services.rules.throttle` and :mod:`services.rules.sessions` use it. Like
every repository function, these run in the caller's transaction.
"""

from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple

import asyncpg

# A key's row, locked while an attempt is weighed, with the seconds since its last
# attempt; the row lock makes concurrent attempts count one after another.
ADD_SIGN_IN_KEY = """
INSERT INTO sign_in_attempts (scope, key, attempts, last_attempt_at) VALUES ($1, $2, 0, now())
ON CONFLICT (scope, key) DO NOTHING
"""
SIGN_IN_KEY_FOR_UPDATE = """
SELECT attempts, extract(epoch FROM now() - last_attempt_at)::float8 AS idle_seconds
FROM sign_in_attempts WHERE scope = $1 AND key = $2 FOR UPDATE
"""
COUNT_SIGN_IN_ATTEMPT = """
UPDATE sign_in_attempts SET attempts = $3, last_attempt_at = now() WHERE scope = $1 AND key = $2
"""
PURGE_IDLE_SIGN_IN_KEYS = """
DELETE FROM sign_in_attempts WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM sign_in_attempts
    WHERE last_attempt_at < now() - make_interval(secs => $1) LIMIT 100
    FOR UPDATE SKIP LOCKED
))
"""
FORGET_SIGN_IN_KEY = "DELETE FROM sign_in_attempts WHERE scope = $1 AND key = $2"
GIVE_BACK_SIGN_IN_ATTEMPT = """
UPDATE sign_in_attempts SET attempts = greatest(attempts - 1, 0) WHERE scope = $1 AND key = $2
"""

INSERT_CONSOLE_SESSION = """
INSERT INTO console_sessions (id_hash, user_id, csrf_secret, expires_at)
VALUES ($1, $2, $3, now() + $4::interval)
"""
# A live session and its user, marking it seen.
TOUCH_CONSOLE_SESSION = """
UPDATE console_sessions AS s SET last_seen_at = now()
FROM users AS u
WHERE s.id_hash = $1 AND s.expires_at > now() AND u.id = s.user_id
RETURNING s.csrf_secret, s.expires_at, u.id AS user_id, u.org_id, u.role, u.email
"""
DELETE_CONSOLE_SESSION = "DELETE FROM console_sessions WHERE id_hash = $1"
DELETE_EXPIRED_CONSOLE_SESSIONS = """
DELETE FROM console_sessions WHERE user_id = $1 AND expires_at <= now()
"""

# Retention (infra/retention.py), a batch of at most $1 each: expired sessions, and
# throttle keys idle longer than the throttle's window ($2 seconds), whose counts a
# next attempt would reset anyway.
PURGE_EXPIRED_CONSOLE_SESSIONS = """
DELETE FROM console_sessions WHERE id_hash = ANY (ARRAY(
    SELECT id_hash FROM console_sessions WHERE expires_at <= now()
    LIMIT $1 FOR UPDATE SKIP LOCKED
))
"""
PURGE_IDLE_SIGN_IN_ATTEMPTS = """
DELETE FROM sign_in_attempts WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM sign_in_attempts
    WHERE last_attempt_at < now() - make_interval(secs => $2)
    LIMIT $1 FOR UPDATE SKIP LOCKED
))
"""


# Sign-in throttling: one counter a (scope, key).


async def add_sign_in_key(connection: asyncpg.Connection, scope: str, key: str) -> bool:
    """Start counting attempts at the key; False when it is counted already."""
    status: str = await connection.execute(ADD_SIGN_IN_KEY, scope, key)
    return status.endswith(" 1")


async def purge_idle_sign_in_keys(connection: asyncpg.Connection, idle_seconds: float) -> None:
    """Forget a few keys that have seen no attempt for ``idle_seconds``."""
    await connection.execute(PURGE_IDLE_SIGN_IN_KEYS, idle_seconds)


class SignInCounter(NamedTuple):
    attempts: int
    #: Seconds since the key's last attempt.
    idle_seconds: float


async def sign_in_key_for_update(
    connection: asyncpg.Connection, scope: str, key: str
) -> SignInCounter:
    """The key's counter (which :func:`add_sign_in_key` made), locked until the transaction
    ends."""
    row = await connection.fetchrow(SIGN_IN_KEY_FOR_UPDATE, scope, key)
    return SignInCounter(row["attempts"], row["idle_seconds"])


async def count_sign_in_attempt(
    connection: asyncpg.Connection, scope: str, key: str, attempts: int
) -> None:
    await connection.execute(COUNT_SIGN_IN_ATTEMPT, scope, key, attempts)


async def forget_sign_in_key(connection: asyncpg.Connection, scope: str, key: str) -> None:
    await connection.execute(FORGET_SIGN_IN_KEY, scope, key)


async def give_back_sign_in_attempt(connection: asyncpg.Connection, scope: str, key: str) -> None:
    await connection.execute(GIVE_BACK_SIGN_IN_ATTEMPT, scope, key)


# Console sessions, by the SHA-256 of their id.


async def insert_console_session(
    connection: asyncpg.Connection,
    id_hash: bytes,
    user_id: str,
    csrf_secret: bytes,
    lifetime: timedelta,
) -> None:
    await connection.execute(INSERT_CONSOLE_SESSION, id_hash, user_id, csrf_secret, lifetime)


async def touch_console_session(
    connection: asyncpg.Connection, id_hash: bytes
) -> asyncpg.Record | None:
    """The live session and its user, marking it seen; None when it is unknown or expired."""
    return await connection.fetchrow(TOUCH_CONSOLE_SESSION, id_hash)


async def delete_console_session(connection: asyncpg.Connection, id_hash: bytes) -> None:
    await connection.execute(DELETE_CONSOLE_SESSION, id_hash)


async def delete_expired_console_sessions(connection: asyncpg.Connection, user_id: str) -> None:
    await connection.execute(DELETE_EXPIRED_CONSOLE_SESSIONS, user_id)
