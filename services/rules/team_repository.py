"""Every SQL statement of the team: business users, their invitations and roles."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

LIST_USERS = """
SELECT u.id, u.email, u.role, u.status, u.invited_at, u.last_sign_in_at, u.created_at,
       i.expires_at AS invitation_expires_at
FROM users AS u LEFT JOIN invitations AS i ON i.user_id = u.id
WHERE u.org_id = $1
ORDER BY lower(u.email)
"""
INSERT_INVITED_USER = """
INSERT INTO users (id, org_id, email, password_hash, role, status, invited_at, invited_by)
VALUES ($1, $2, $3, NULL, $4, 'invited', now(), $5)
RETURNING *
"""
# Inviting an invited user again: the new role and inviter; the old link is replaced.
REINVITE_USER = """
UPDATE users SET role = $2, invited_at = now(), invited_by = $3
WHERE id = $1 AND status = 'invited'
RETURNING *
"""
UPSERT_INVITATION = """
INSERT INTO invitations (user_id, token_hash, expires_at) VALUES ($1, $2, now() + $3::interval)
ON CONFLICT (user_id) DO UPDATE SET
    token_hash = EXCLUDED.token_hash, expires_at = EXCLUDED.expires_at, created_at = now()
RETURNING expires_at
"""
# Used once: the row goes in the transaction that activates the user, and a
# concurrent acceptance of the same token finds nothing.
TAKE_INVITATION = """
DELETE FROM invitations WHERE token_hash = $1 AND expires_at > now() RETURNING user_id
"""
ACTIVATE_USER = """
UPDATE users SET status = 'active', password_hash = $2
WHERE id = $1 AND status = 'invited'
RETURNING *
"""
# The organisation's admins, locked in one order, so two changes that could each
# leave it without one are judged one after the other.
LOCK_ADMINS = """
SELECT id FROM users WHERE org_id = $1 AND role = 'admin' AND status = 'active'
ORDER BY id FOR UPDATE
"""
CHANGE_ROLE = "UPDATE users SET role = $3 WHERE id = $1 AND org_id = $2 RETURNING *"
# Console sessions and the open invitation go with the user (ON DELETE CASCADE).
DELETE_USER = "DELETE FROM users WHERE id = $1 AND org_id = $2 RETURNING *"
ACTIVE_USER_ROLE = """
SELECT role FROM users WHERE id = $1 AND org_id = $2 AND status = 'active'
"""
RECORD_SIGN_IN = "UPDATE users SET last_sign_in_at = now() WHERE id = $1"


async def list_users(connection: asyncpg.Connection, org_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(LIST_USERS, org_id)
    return rows


async def insert_invited_user(
    connection: asyncpg.Connection, user_id: str, org_id: str, email: str, role: str, by: str
) -> asyncpg.Record:
    row: asyncpg.Record = await connection.fetchrow(
        INSERT_INVITED_USER, user_id, org_id, email, role, by
    )
    return row


async def reinvite_user(
    connection: asyncpg.Connection, user_id: str, role: str, by: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(REINVITE_USER, user_id, role, by)


async def upsert_invitation(
    connection: asyncpg.Connection, user_id: str, token_hash: bytes, lifetime: timedelta
) -> datetime:
    expires_at: datetime = await connection.fetchval(
        UPSERT_INVITATION, user_id, token_hash, lifetime
    )
    return expires_at


async def take_invitation(connection: asyncpg.Connection, token_hash: bytes) -> str | None:
    user_id: str | None = await connection.fetchval(TAKE_INVITATION, token_hash)
    return user_id


async def activate_user(
    connection: asyncpg.Connection, user_id: str, password_hash: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(ACTIVATE_USER, user_id, password_hash)


async def lock_admins(connection: asyncpg.Connection, org_id: str) -> set[str]:
    return {row["id"] for row in await connection.fetch(LOCK_ADMINS, org_id)}


async def change_role(
    connection: asyncpg.Connection, org_id: str, user_id: str, role: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(CHANGE_ROLE, user_id, org_id, role)


async def delete_user(
    connection: asyncpg.Connection, org_id: str, user_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(DELETE_USER, user_id, org_id)


async def active_user_role(
    executor: asyncpg.Pool | asyncpg.Connection, org_id: str, user_id: str
) -> str | None:
    role: str | None = await executor.fetchval(ACTIVE_USER_ROLE, user_id, org_id)
    return role


async def record_sign_in(connection: asyncpg.Connection, user_id: str) -> None:
    await connection.execute(RECORD_SIGN_IN, user_id)
