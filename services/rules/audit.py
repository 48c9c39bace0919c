"""The audit log: a line for every change, in the change's transaction, and reading it
back filtered."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from infra.problems import Problem
from services.rules import repository


async def audit(
    connection: asyncpg.Connection,
    org_id: str,
    actor: str,
    action: str,
    subject_id: str,
    details: dict[str, Any],
) -> None:
    await repository.insert_audit_line(connection, org_id, actor, action, subject_id, details)


@dataclass(frozen=True)
class AuditFilter:
    """Which audit lines to list: all of them when nothing is set."""

    rule_id: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None


async def list_audit(
    connection: asyncpg.Connection, org_id: str, where: AuditFilter, limit: int
) -> list[asyncpg.Record]:
    if where.since and where.until and where.until <= where.since:
        raise Problem("until must be after since", code="INVALID_PERIOD", field="until")
    return await repository.list_audit(
        connection,
        org_id,
        before=where.before,
        subject_id=where.rule_id,
        actor=where.actor,
        since=where.since,
        until=where.until,
        limit=limit,
    )
