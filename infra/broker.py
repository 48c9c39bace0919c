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
import ssl
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from infra.errors import StartupError
from infra.logging import get_logger
from infra.settings import ServiceSettings

log = get_logger(__name__)


def broker_security(settings: ServiceSettings) -> BaseSecurity | None:
    """The FastStream security object for the configured protocol, if any."""
    protocol = settings.kafka_security_protocol.upper()
    use_ssl = protocol in {"SSL", "SASL_SSL"}
    context = ssl.create_default_context() if use_ssl else None
    if protocol.startswith("SASL"):
        username = settings.kafka_sasl_username or ""
        password = settings.kafka_sasl_password or ""
        mechanism = (settings.kafka_sasl_mechanism or "PLAIN").upper()
        classes = {
            "PLAIN": SASLPlaintext,
            "SCRAM-SHA-256": SASLScram256,
            "SCRAM-SHA-512": SASLScram512,
        }
        if mechanism not in classes:
            raise StartupError(f"KAFKA_SASL_MECHANISM {mechanism!r} is not supported")
        return classes[mechanism](username, password, ssl_context=context)
    if use_ssl:
        return BaseSecurity(ssl_context=context)
    return None


def producer_options(settings: ServiceSettings) -> dict[str, Any]:
    return {
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent_producer,
        "linger_ms": 5,
    }


def create_broker(settings: ServiceSettings, **options: Any) -> KafkaBroker:
    """A FastStream Kafka broker that never acknowledges a failed message."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers.split(","),
        client_id=settings.service_name,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        security=broker_security(settings),
        logger=get_logger(f"{settings.service_name}.broker"),
        **producer_options(settings),
        **options,
    )


def create_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """A plain aiokafka producer with the same settings, for the outbox relay."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        client_id=f"{settings.service_name}-outbox",
        **producer_options(settings),
        **parse_security(broker_security(settings)),
    )


async def start_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """Start a producer, retrying until the start-up timeout, or fail clearly."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.startup_timeout_seconds
    while True:
        producer = create_producer(settings)
        try:
            await producer.start()
        except KafkaError as error:
            await producer.stop()
            if loop.time() >= deadline:
                raise StartupError(
                    f"Kafka at {settings.kafka_bootstrap_servers} is not reachable: {error}. "
                    "Start it or set KAFKA_BOOTSTRAP_SERVERS."
                ) from error
            await asyncio.sleep(0.5)
        else:
            return producer
