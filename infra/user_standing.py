"""Business users' standing as ``users.lifecycle.v1`` tells it: removed, or the role now.

The rules service signs business users' bearer tokens, and other services
(the ledger today, the notifier later) accept them without asking it. A token
lives for its lifetime, but a removed user must be refused at once and a
demoted one judged by the new role: a service that accepts those tokens
consumes the topic into its ``user_standing`` table (an infra migration, so
every service has it) with :func:`project_users`, and asks :func:`current_role`
on every request a user's token makes.

A user the projection has not heard of is judged by its token: users join
active, and their first event may still be on its way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from contracts import USERS_LIFECYCLE, UserLifecycleEvent
from infra import inbox
from infra.http import Unauthorized
from infra.tokens import Principal

UPSERT_USER_STANDING = """
INSERT INTO user_standing (user_id, org_id, role, removed, changed_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::timestamptz[])
ON CONFLICT (user_id) DO UPDATE SET
    org_id = EXCLUDED.org_id, role = EXCLUDED.role, removed = EXCLUDED.removed,
    changed_at = EXCLUDED.changed_at
WHERE user_standing.changed_at < EXCLUDED.changed_at
"""
GET_USER_STANDING = "SELECT role, removed FROM user_standing WHERE user_id = $1 AND org_id = $2"


class UserRemoved(Exception):
    """The business user was removed from its organisation: its tokens are void."""


async def project_users(
    connection: asyncpg.Connection, events: Sequence[UserLifecycleEvent]
) -> None:
    """Keep each user's newest standing (an older event arriving late changes nothing);
    each event once, through the inbox."""
    events = await inbox.claim_new(connection, events, USERS_LIFECYCLE)
    newest: dict[str, UserLifecycleEvent] = {}
    for event in events:
        held = newest.get(event.data.user_id)
        if held is None or held.data.changed_at < event.data.changed_at:
            newest[event.data.user_id] = event
    standings = [event.data for event in newest.values()]
    await connection.execute(
        UPSERT_USER_STANDING,
        [standing.user_id for standing in standings],
        [standing.org_id for standing in standings],
        [standing.role for standing in standings],
        [standing.removed for standing in standings],
        [standing.changed_at for standing in standings],
    )


async def current_role(
    executor: asyncpg.Pool | asyncpg.Connection, org_id: str, user_id: str, token_role: str | None
) -> str | None:
    """The role to judge the user by: the projected one, else the token's;
    :class:`UserRemoved` when the user was removed."""
    row = await executor.fetchrow(GET_USER_STANDING, user_id, org_id)
    if row is None:
        return token_role
    if row["removed"]:
        raise UserRemoved(user_id)
    return str(row["role"])


async def as_it_stands(
    executor: asyncpg.Pool | asyncpg.Connection, principal: Principal
) -> Principal:
    """``principal`` judged by the user's standing now: a business user who was removed is
    refused (401), and one whose role changed has the new role. A client is as it is."""
    if principal.kind != "user":
        return principal
    try:
        role = await current_role(executor, principal.org_id, principal.subject, principal.role)
    except UserRemoved:
        raise Unauthorized("this user is no longer a member of the organisation") from None
    return principal if role == principal.role else dataclasses.replace(principal, role=role)
