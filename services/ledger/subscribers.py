"""Kafka handlers of the ledger: thin, they parse and hand over to the service."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord
from faststream import StreamMessage
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from contracts import POINTS_REQUESTED, PointsRequestedEvent
from infra.logging import get_logger
from infra.runtime import ServiceRuntime
from services.ledger.service import apply_batch
from services.ledger.settings import LedgerSettings

log = get_logger(__name__)


def parse_requests(records: tuple[ConsumerRecord[Any, Any], ...]) -> list[PointsRequestedEvent]:
    """The batch's valid events, in delivery order; invalid messages are logged and skipped.

    One malformed message must not stop its partition (and every member on
    it) forever, which redelivering the whole batch would do.
    """
    events = []
    for record in records:
        try:
            events.append(PointsRequestedEvent.model_validate_json(record.value or b""))
        except ValidationError as error:
            log.error(
                "points.request.invalid",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                errors=error.error_count(),
                error=str(error),
            )
    return events


async def undecoded(message: StreamMessage[Any]) -> Any:
    """The batch's raw message values: :func:`parse_requests` parses them once, into
    contracts, rather than FastStream first decoding every one as JSON."""
    return message.body


def register_subscribers(
    broker: KafkaBroker, runtime: ServiceRuntime, settings: LedgerSettings
) -> None:
    """Attach the ledger's handlers to ``broker``."""

    @broker.subscriber(
        POINTS_REQUESTED,
        group_id="ledger",
        batch=True,
        max_records=settings.batch_max_records,
        decoder=undecoded,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_interval_ms,
        auto_offset_reset="earliest",
        title="ledger.apply_points_requests",
        description="Applies accepted earn and redeem requests to the ledger, one "
        "PostgreSQL transaction per batch; results go out through the outbox.",
    )
    async def apply_points_requests(_: list[Any], message: KafkaMessage) -> None:
        """Apply a batch of points requests; offsets are committed only after it commits."""
        events = parse_requests(message.raw_message)
        if not events:
            return
        async with runtime.pool.acquire() as connection, connection.transaction():
            await apply_batch(connection, events)
