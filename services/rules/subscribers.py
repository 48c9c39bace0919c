"""Kafka handlers of the rules service: thin, one transaction each."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from contracts import POINTS_RESULTS, PointsResultEvent
from infra.runtime import ServiceRuntime
from services.rules import service

USAGE_GROUP = "rules.usage"


def register(broker: KafkaBroker, runtime: ServiceRuntime) -> None:
    @broker.subscriber(
        POINTS_RESULTS,
        group_id=USAGE_GROUP,
        auto_offset_reset="earliest",
        description="Counts the points each rule has moved (applied, less what reversals "
        "moved back), so its cap cannot be lowered below them. De-duplicated through the inbox.",
    )
    async def on_points_result(event: PointsResultEvent) -> None:
        async with runtime.pool.acquire() as connection, connection.transaction():
            await service.record_usage(connection, event)
