"""Kafka handlers of the trigger gateway: thin, one transaction each (a batch for results)."""

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
from infra.broker import subscribe_in_batches
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

    @subscribe_in_batches(
        broker,
        POINTS_RESULTS,
        PointsResultEvent,
        group_id=RESULTS_GROUP,
        description="Settles requests with the ledger's outcome; frees caps on rejection, and "
        "what a reversal moved back. One transaction per batch.",
    )
    async def settle_results(events: list[PointsResultEvent]) -> None:
        async with runtime.pool.acquire() as connection, connection.transaction():
            await service.settle_results(connection, events)
