"""Members' standing: a business user blocks or unblocks a member of one environment.

A member is any ``userId`` a partner sends; nothing registers one. Blocking is
per organisation and environment, audited, and published on
``members.lifecycle.v1`` through the outbox, like every rule change: the trigger
gateway then refuses the member's triggers with ``MEMBER_BLOCKED`` and the
ledger settles the member's requests it has not applied yet as rejected.

Blocking is idempotent: blocking a blocked member (or unblocking one in good
standing) changes, audits and publishes nothing and answers the standing as it
is, so a retried request is harmless. The reason given when the member was
blocked stays until the member is unblocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from contracts import Environment, MemberLifecycleEvent, MemberStanding
from infra import outbox
from infra.logging import get_logger
from services.rules import members_repository
from services.rules.audit import audit

log = get_logger(__name__)


@dataclass(frozen=True)
class Standing:
    """Whether a member is blocked, and who last changed that (None: nobody ever did)."""

    user_id: str
    environment: str
    blocked: bool
    reason: str | None = None
    changed_by: str | None = None
    changed_at: datetime | None = None

    @classmethod
    def of(cls, row: asyncpg.Record) -> Standing:
        return cls(
            user_id=row["user_id"],
            environment=row["environment"],
            blocked=row["blocked"],
            reason=row["reason"],
            changed_by=row["changed_by"],
            changed_at=row["changed_at"],
        )


async def standing(
    connection: asyncpg.Connection, org_id: str, environment: str, user_id: str
) -> Standing:
    """The member's standing; a member nobody blocked is in good standing."""
    row = await members_repository.get_standing(connection, org_id, environment, user_id)
    return Standing(user_id, environment, blocked=False) if row is None else Standing.of(row)


async def change_standing(
    connection: asyncpg.Connection,
    org_id: str,
    environment: Environment,
    user_id: str,
    *,
    blocked: bool,
    reason: str | None,
    actor: str,
    correlation_id: str,
) -> Standing:
    """Block (``blocked``) or unblock the member; a no-op when it already stands so.

    The statement decides (see ``members_repository.CHANGE_STANDING``), so of concurrent
    changes of one member each judges the standing the one before it left: two blocks
    publish one event, and a block and an unblock publish theirs in the order of their
    ``changedAt``."""
    row = await members_repository.change_standing(
        connection,
        org_id,
        environment,
        user_id,
        blocked=blocked,
        reason=reason if blocked else None,
        changed_by=actor,
    )
    if row is None:
        return await standing(connection, org_id, environment, user_id)
    action = "member.blocked" if blocked else "member.unblocked"
    details = {"environment": environment, "userId": user_id, "reason": row["reason"]}
    await audit(connection, org_id, actor, action, user_id, details)
    event = MemberLifecycleEvent.new_event(
        data=MemberStanding(
            org_id=org_id,
            environment=environment,
            user_id=user_id,
            blocked=blocked,
            reason=row["reason"],
            changed_by=actor,
            changed_at=row["changed_at"],
        ),
        environment=environment,
        org_id=org_id,
        correlation_id=correlation_id,
    )
    await outbox.enqueue(connection, event)
    log.info(action, environment=environment, org_id=org_id, actor=actor)
    return Standing.of(row)


async def blocked_members(
    connection: asyncpg.Connection, org_id: str, environment: str, after: str | None, limit: int
) -> list[Standing]:
    """A page of the blocked members, by user id, after ``after``."""
    rows = await members_repository.list_blocked(connection, org_id, environment, after, limit)
    return [Standing.of(row) for row in rows]
