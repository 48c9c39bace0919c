"""Kafka handlers of the ledger: thin, they parse and hand over to the service."""

from __future__ import annotations

import asyncio

from faststream.kafka import KafkaBroker

from contracts import POINTS_REQUESTED, PointsRequestedEvent
from infra.broker import subscribe_in_batches
from infra.runtime import ServiceRuntime
from services.ledger.service import apply_batch, members_apart
from services.ledger.settings import LedgerSettings


def register_subscribers(
    broker: KafkaBroker, runtime: ServiceRuntime, settings: LedgerSettings
) -> None:
    """Attach the ledger's handlers to ``broker``."""

    @subscribe_in_batches(
        broker,
        POINTS_REQUESTED,
        PointsRequestedEvent,
        group_id="ledger",
        max_records=settings.batch_max_records,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_interval_ms,
        description="Applies accepted earn and redeem requests to the ledger, one "
        "PostgreSQL transaction per part of a batch (parts have no member in common); "
        "results go out through the outbox.",
    )
    async def apply_points_requests(events: list[PointsRequestedEvent]) -> None:
        """Apply a batch of points requests; offsets are committed only after it commits.

        Its parts (``batch_parts``, no member in common) are applied at the same time,
        each in its own transaction; every part is waited for, and if one failed the
        batch fails and is redelivered whole: the parts that committed are then known
        to the inbox and change nothing.
        """
        parts = members_apart(events, settings.batch_parts)
        outcomes = await asyncio.gather(*map(apply_part, parts), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def apply_part(events: list[PointsRequestedEvent]) -> None:
        async with runtime.pool.acquire() as connection, connection.transaction():
            await apply_batch(connection, events)
