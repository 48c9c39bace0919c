"""Kafka: the FastStream broker factory and the producer settings.

Two rules hold for every service:

* **Nothing is acknowledged before it is handled.** FastStream's default ack
  policy commits the offset when a message arrives; a handler that then fails
  loses the message. Brokers made here use ``NACK_ON_ERROR``: offsets are
  committed after the handler (and so its database transaction) succeeded,
  and a failure rewinds the partition so the message comes again.
* **Producer settings work with both brokers we run on.** Apache Kafka gets an
  idempotent producer with ``acks=all``; the embedded Tansu broker refuses
  ``InitProducerId``, so idempotence is a setting (off by default) while
  ``acks=all`` is always on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream import AckPolicy, BaseMiddleware, StreamMessage
from faststream.kafka import KafkaBroker

from infra.errors import StartupError
from infra.kafka_admin import wait_for_kafka
from infra.kafka_security import broker_security, kafka_client_options
from infra.logging import get_logger
from infra.settings import ServiceSettings

log = get_logger(__name__)


def producer_options(settings: ServiceSettings) -> dict[str, Any]:
    return {
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent_producer,
        "linger_ms": 5,
    }


class BindMessageIds(BaseMiddleware):
    """Bind the message's correlation id (set by the outbox relay) to every log line."""

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        with structlog.contextvars.bound_contextvars(
            correlation_id=msg.correlation_id, message_id=msg.message_id
        ):
            return await call_next(msg)


def create_broker(settings: ServiceSettings, **options: Any) -> KafkaBroker:
    """A FastStream Kafka broker that never acknowledges a failed message; consumers are
    registered with :func:`infra.consumers.consume_in_batches`, which isolates failures."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers.split(","),
        middlewares=(BindMessageIds,),
        client_id=settings.service_name,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # On stop, the batch each consumer holds is finished (then committed) first.
        graceful_timeout=settings.shutdown_grace_seconds,
        security=broker_security(settings),
        logger=get_logger(f"{settings.service_name}.broker"),
        **producer_options(settings),
        **options,
    )


#: Most bytes the outbox relay puts in one record batch of a partition. aiokafka
#: sends one produce request to a broker at a time, holding at most one batch per
#: partition, so with its 16 KiB default a relay batch of 2,000 results took seven
#: round trips; this fits it in one, and stays under Kafka's 1 MiB
#: ``message.max.bytes``.
RELAY_RECORD_BATCH_BYTES = 256 * 1024


def create_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """A plain aiokafka producer with the same settings, for the outbox relay."""
    options = producer_options(settings)
    # The relay hands the producer whole record batches and waits for them: a linger
    # would only delay each batch (5 ms a hop), never fill it further.
    options["linger_ms"] = 0
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        client_id=f"{settings.service_name}-outbox",
        max_batch_size=RELAY_RECORD_BATCH_BYTES,
        **options,
        **kafka_client_options(settings),
    )


async def wait_for_broker(settings: ServiceSettings) -> None:
    """:func:`wait_for_kafka` with a service's settings and start-up timeout."""
    await wait_for_kafka(
        settings.kafka_bootstrap_servers,
        settings.startup_timeout_seconds,
        **kafka_client_options(settings),
    )


async def start_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """Start a producer once the broker answers, or fail clearly."""
    await wait_for_broker(settings)
    producer = create_producer(settings)
    try:
        await producer.start()
    except KafkaError as error:
        await producer.stop()
        raise StartupError(
            f"Kafka at {settings.kafka_bootstrap_servers} refused the producer: {error}. "
            "Check KAFKA_* settings."
        ) from error
    return producer


async def start_broker(broker: KafkaBroker) -> None:
    """Start ``broker`` with its subscribers joining their consumer groups side by side.

    A consumer subscribed to topics waits, as it starts, until its group assigns it
    partitions: a join takes seconds (about five on the embedded broker). FastStream's
    ``broker.start()`` starts subscribers one after another, so a process consuming in
    five groups (the ledger: requests per environment, member standings per environment,
    clients) took five joins before its last group ran. Started together, it takes one.
    """
    await broker.connect()
    # Every start is waited for, failed or not, so none is left joining a group after
    # the broker is stopped because another failed.
    outcomes = await asyncio.gather(
        *(subscriber.start() for subscriber in broker.subscribers), return_exceptions=True
    )
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        for failure in failures[1:]:
            log.error("broker.subscriber_start_failed", error=str(failure) or repr(failure))
        await broker.stop()
        raise failures[0]
    for publisher in broker.publishers:
        await publisher.start()
    broker.running = True
