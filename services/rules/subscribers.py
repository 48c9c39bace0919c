"""Kafka handlers of the rules service: thin, one transaction per batch."""

from __future__ import annotations

from contracts import POINTS_RESULTS, PointsResultEvent
from infra.consumers import environment_from_member_key
from infra.runtime import ServiceRuntime
from services.rules.service import rules

USAGE_GROUP = "rules.usage"


def register(runtime: ServiceRuntime) -> None:
    async def count_usage(events: list[PointsResultEvent]) -> None:
        async with runtime.pool.acquire() as connection, connection.transaction():
            await rules.record_usages(connection, events)

    runtime.consume(
        {POINTS_RESULTS: PointsResultEvent},
        group_id=USAGE_GROUP,
        handler=count_usage,
        environment_of=environment_from_member_key,
        description="Counts the points each rule has moved (applied, less what reversals "
        "moved back), so its cap cannot be lowered below them. De-duplicated through the inbox; "
        "one transaction per batch.",
    )
