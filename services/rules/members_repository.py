"""The SQL of members' standing: whom a business blocked, per organisation and environment.

The functions run in the caller's transaction; the caller owns it.
"""

from __future__ import annotations

import asyncpg

GET_STANDING = """
SELECT * FROM member_standing WHERE org_id = $1 AND environment = $2 AND user_id = $3
"""
# Blocks ($4) or unblocks the member, and returns the row only when that changed its
# standing: blocking a blocked member, or unblocking one nobody blocked (no row, so none
# is inserted) or in good standing, returns nothing. The conflicting row is locked
# before the WHERE and SET are evaluated, so a change waits for one in flight and then
# judges the standing it left; and the time is clock_timestamp(), read then, not the
# transaction's start: of two changes of one member the later has the later
# changed_at, as its outbox row (staged under the same lock) is the later too.
CHANGE_STANDING = """
INSERT INTO member_standing AS s
    (environment, org_id, user_id, blocked, reason, changed_by, changed_at)
SELECT $2, $1, $3, $4, $5, $6, clock_timestamp()
WHERE $4 OR EXISTS (
    SELECT FROM member_standing WHERE environment = $2 AND org_id = $1 AND user_id = $3
)
ON CONFLICT (environment, org_id, user_id) DO UPDATE
SET blocked = excluded.blocked, reason = excluded.reason, changed_by = excluded.changed_by,
    changed_at = clock_timestamp()
WHERE s.blocked <> excluded.blocked
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


async def change_standing(
    connection: asyncpg.Connection,
    org_id: str,
    environment: str,
    user_id: str,
    *,
    blocked: bool,
    reason: str | None,
    changed_by: str,
) -> asyncpg.Record | None:
    """The member's new standing; None when it already stood so (nothing changed)."""
    return await connection.fetchrow(
        CHANGE_STANDING, org_id, environment, user_id, blocked, reason, changed_by
    )


async def list_blocked(
    connection: asyncpg.Connection, org_id: str, environment: str, after: str | None, limit: int
) -> list[asyncpg.Record]:
    """A page of the blocked members, by user id, after ``after`` (from the first if None)."""
    return list(await connection.fetch(LIST_BLOCKED, org_id, environment, after, limit))
