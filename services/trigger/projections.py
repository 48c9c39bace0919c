"""The gateway's projections of the rules and clients the rules service publishes."""

from __future__ import annotations

import asyncpg

from contracts import ClientLifecycleEvent, RuleLifecycleEvent
from services.trigger import repository


async def project_rule(connection: asyncpg.Connection, event: RuleLifecycleEvent) -> None:
    await repository.upsert_rule(connection, event.data)


async def project_client(connection: asyncpg.Connection, event: ClientLifecycleEvent) -> None:
    await repository.upsert_client(connection, event.data, event.occurred_at)
