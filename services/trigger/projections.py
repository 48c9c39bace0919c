"""The gateway's projections of the rules, clients and member standings the rules
service publishes."""

from __future__ import annotations

import asyncpg

from contracts import ClientLifecycleEvent, MemberLifecycleEvent, RuleLifecycleEvent
from services.trigger import repository

#: An event of a topic the projection group consumes (``contracts.GATEWAY_PROJECTED_TOPICS``).
LifecycleEvent = RuleLifecycleEvent | ClientLifecycleEvent | MemberLifecycleEvent


async def project(connection: asyncpg.Connection, event: LifecycleEvent) -> None:
    """Project one lifecycle event; each upsert is versioned, so a replay is safe."""
    if isinstance(event, RuleLifecycleEvent):
        await repository.upsert_rule(connection, event.data)
    elif isinstance(event, ClientLifecycleEvent):
        await repository.upsert_client(connection, event.data, event.occurred_at)
    else:
        await repository.upsert_member_standing(connection, event.data)
