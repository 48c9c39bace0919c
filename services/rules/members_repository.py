"""The SQL of members' standing: whom a business blocked, per organisation and environment.

The functions run in the caller's transaction; the caller owns it.
"""

from __future__ import annotations

import asyncpg

GET_STANDING = """
SELECT * FROM member_standing WHERE org_id = $1 AND environment = $2 AND user_id = $3
"""
# Locks the member's row, when there is one, so two changes of one member are serialised.
GET_STANDING_FOR_UPDATE = GET_STANDING + " FOR UPDATE"
SET_STANDING = """
INSERT INTO member_standing AS s (environment, org_id, user_id, blocked, reason, changed_by)
VALUES ($2, $1, $3, $4, $5, $6)
ON CONFLICT (environment, org_id, user_id) DO UPDATE
SET blocked = excluded.blocked, reason = excluded.reason, changed_by = excluded.changed_by,
    changed_at = now()
RETURNING *
"""
LIST_BLOCKED = """
SELECT * FROM member_standing
WHERE org_id = $1 AND environment = $2 AND blocked AND ($3::text IS NULL OR user_id > $3)
ORDER BY user_id LIMIT $4
"""


async def get_standing(
    connection: asyncpg.Connection, org_id: str, environment: str, user_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_STANDING, org_id, environment, user_id)


async def get_standing_for_update(
    connection: asyncpg.Connection, org_id: str, environment: str, user_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_STANDING_FOR_UPDATE, org_id, environment, user_id)


async def set_standing(
    connection: asyncpg.Connection,
    org_id: str,
    environment: str,
    user_id: str,
    *,
    blocked: bool,
    reason: str | None,
    changed_by: str,
) -> asyncpg.Record:
    return await connection.fetchrow(
        SET_STANDING, org_id, environment, user_id, blocked, reason, changed_by
    )


async def list_blocked(
    connection: asyncpg.Connection, org_id: str, environment: str, after: str | None, limit: int
) -> list[asyncpg.Record]:
    """A page of the blocked members, by user id, after ``after`` (from the first if None)."""
    return list(await connection.fetch(LIST_BLOCKED, org_id, environment, after, limit))
