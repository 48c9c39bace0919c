"""The gateway's projections of the rules and clients the rules service publishes."""

from __future__ import annotations

import asyncpg

from contracts import ClientLifecycleEvent, RuleLifecycleEvent
from services.trigger import repository as sql


async def project_rule(connection: asyncpg.Connection, event: RuleLifecycleEvent) -> None:
    rule = event.data
    await connection.execute(
        sql.UPSERT_RULE,
        rule.rule_id,
        rule.org_id,
        rule.environment,
        rule.name,
        rule.type,
        rule.status,
        rule.api_trigger,
        list(rule.authorized_client_ids),
        rule.cap_max,
        rule.cap_per_member,
        rule.max_amount_per_request,
        rule.starts_at,
        rule.ends_at,
        rule.version,
    )


async def project_client(connection: asyncpg.Connection, event: ClientLifecycleEvent) -> None:
    client = event.data
    await connection.execute(
        sql.UPSERT_CLIENT,
        client.client_id,
        client.org_id,
        client.environment,
        client.status,
        client.request_signing_key,
        event.occurred_at,
    )
