"""Kafka handlers of the trigger gateway: thin, one transaction each."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from contracts import (
    CLIENTS_LIFECYCLE,
    POINTS_RESULTS,
    RULES_LIFECYCLE,
    ClientLifecycleEvent,
    PointsResultEvent,
    RuleLifecycleEvent,
)
from infra import inbox
from infra.runtime import ServiceRuntime
from services.trigger import service

PROJECTION_GROUP = "trigger.projection"
RESULTS_GROUP = "trigger.results"


def register(broker: KafkaBroker, runtime: ServiceRuntime) -> None:
    @broker.subscriber(
        RULES_LIFECYCLE,
        CLIENTS_LIFECYCLE,
        group_id=PROJECTION_GROUP,
        auto_offset_reset="earliest",
        description="Keeps the gateway's rule and client projections. Upserts are "
        "versioned, so a replay from the beginning is safe; a revoked client is refused at once.",
    )
    async def on_lifecycle(event: RuleLifecycleEvent | ClientLifecycleEvent) -> None:
        async with runtime.pool.acquire() as connection:
            if isinstance(event, RuleLifecycleEvent):
                await service.project_rule(connection, event)
            else:
                await service.project_client(connection, event)

    @broker.subscriber(
        POINTS_RESULTS,
        group_id=RESULTS_GROUP,
        auto_offset_reset="earliest",
        description="Settles requests with the ledger's outcome; frees caps on rejection, and "
        "what a reversal moved back.",
    )
    async def on_points_result(event: PointsResultEvent) -> None:
        async with runtime.pool.acquire() as connection, connection.transaction():
            if await inbox.claim(connection, event.event_id, POINTS_RESULTS):
                await service.record_result(connection, event)
