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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context
from faststream import AckPolicy, BaseMiddleware, StreamMessage
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from infra.errors import StartupError
from infra.logging import get_logger
from infra.settings import ServiceSettings

log = get_logger(__name__)

_RETRY_SECONDS = 0.1


def broker_security(settings: ServiceSettings) -> BaseSecurity | None:
    """The FastStream security object for the configured protocol, if any.

    TLS verifies the brokers against ``KAFKA_SSL_CAFILE`` (else the system's
    CAs) and presents ``KAFKA_SSL_CERTFILE``/``KAFKA_SSL_KEYFILE`` when set.
    """
    protocol = settings.kafka_security_protocol
    context = _ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol.startswith("SASL_"):
        sasl = _SASL_SECURITY[settings.kafka_sasl_mechanism]
        password = settings.kafka_sasl_password
        return sasl(
            settings.kafka_sasl_username or "",
            password.get_secret_value() if password else "",
            ssl_context=context,
            use_ssl=context is not None,
        )
    if context is not None:
        return BaseSecurity(ssl_context=context)
    return None


_SASL_SECURITY: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


def _ssl_context(settings: ServiceSettings) -> ssl.SSLContext:
    password = settings.kafka_ssl_keyfile_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=password.get_secret_value() if password else None,
        )
    except (OSError, ssl.SSLError) as error:
        raise StartupError(
            f"cannot load the Kafka TLS files (KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE, "
            f"KAFKA_SSL_KEYFILE): {error}"
        ) from error
    return context


def kafka_client_options(settings: ServiceSettings) -> dict[str, Any]:
    """The aiokafka keyword arguments for the configured security (protocol, TLS, SASL)."""
    return parse_security(broker_security(settings))


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
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        client_id=f"{settings.service_name}-outbox",
        max_batch_size=RELAY_RECORD_BATCH_BYTES,
        **producer_options(settings),
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


# The timeout is a retry deadline, not a cancellation: when it passes, the error
# names the broker and the last failure, which a caller's asyncio.timeout cannot.
async def wait_for_kafka(
    bootstrap_servers: str,
    timeout: float,
    **client_options: Any,
) -> None:
    """Return once a Kafka client can fetch metadata from ``bootstrap_servers``.

    Retries until ``timeout`` seconds have passed, then raises ``StartupError``
    ("Kafka broker at X is not reachable"). ``client_options`` go to aiokafka's
    admin client (``security_protocol``, ``ssl_context``, ``sasl_*``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            async with asyncio.timeout(max(deadline - loop.time(), _RETRY_SECONDS)):
                await _fetch_metadata(bootstrap_servers, client_options)
            return
        except (OSError, KafkaError, TimeoutError) as error:
            if loop.time() >= deadline:
                raise StartupError(
                    f"Kafka broker at {bootstrap_servers} is not reachable "
                    f"(waited {timeout:g} s; last error: {error or type(error).__name__}). "
                    "Start it or set KAFKA_BOOTSTRAP_SERVERS."
                ) from error
        await asyncio.sleep(_RETRY_SECONDS)


async def _fetch_metadata(bootstrap_servers: str, client_options: dict[str, Any]) -> None:
    # A plain TCP connect first: while nothing listens, aiokafka would log an
    # error on every attempt.
    await _connect_to_any(bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
    try:
        await admin.start()  # bootstraps, which fetches the cluster metadata
    finally:
        await admin.close()


async def _connect_to_any(bootstrap_servers: str) -> None:
    """Open and close a TCP connection to the first server that accepts one."""
    error: OSError = ConnectionRefusedError(f"no server in {bootstrap_servers!r}")
    for host, port in _host_ports(bootstrap_servers):
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError as refused:
            error = refused
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise error


def _host_ports(bootstrap_servers: str) -> list[tuple[str, int]]:
    """``"a:9092,[::1]:9093,b"`` as host and port pairs (9092 when no port is given)."""
    pairs = []
    for server in filter(None, (s.strip() for s in bootstrap_servers.split(","))):
        host, colon, port = server.rpartition(":")
        if not colon or host.endswith(":") or not port.isdigit():
            host, port = server, "9092"
        pairs.append((host.strip("[]"), int(port)))
    return pairs


class TopicSpecLike(Protocol):
    """What ``create_topics`` needs to know about a topic (``contracts.TopicSpec`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def partitions(self) -> int: ...

    def config(self) -> dict[str, str]: ...


async def create_topics(
    bootstrap_servers: str,
    topics: Iterable[TopicSpecLike],
    *,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    **client_options: Any,
) -> list[str]:
    """Create the topics that do not exist yet, with the topic's own configuration
    (``cleanup.policy`` compact or delete, a retention where it has one).

    ``configs`` are added to every new topic (``min.insync.replicas``, say).
    Existing topics are left as they are (their partition count is not
    changed). ``client_options`` go to aiokafka's admin client. Returns the
    names of the topics this call created.
    """
    new_topics = [_new_topic(topic, replication_factor, configs or {}) for topic in topics]
    if not new_topics:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
    try:
        await admin.start()
        response = await admin.create_topics(new_topics)
    finally:
        await admin.close()
    return _raise_for_topic_errors(response.topic_errors)


def _new_topic(
    topic: TopicSpecLike, replication_factor: int, configs: Mapping[str, str]
) -> NewTopic:
    # Said even where it is Kafka's default, so the topic shows the plan of contracts/topics.py.
    return NewTopic(
        topic.name,
        topic.partitions,
        replication_factor,
        topic_configs={**configs, **topic.config()},
    )


def _raise_for_topic_errors(topic_errors: Iterable[tuple[Any, ...]]) -> list[str]:
    created = []
    for name, code, *details in topic_errors:
        if code == 0:
            created.append(name)
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        message = details[0] if details and details[0] else for_code(code).description
        raise RuntimeError(
            f"could not create Kafka topic {name}: {for_code(code).__name__}: {message}"
        )
    return created
