"""Kafka administration: waiting for the cluster to answer, and creating topics.

Both go through aiokafka's admin client, with the ``client_options`` of
:func:`infra.kafka_security.kafka_client_options` (or none, on the embedded
broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from infra.errors import StartupError

_RETRY_SECONDS = 0.1


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


class ClusterIdentity:
    """Asks the Kafka cluster its id (``DescribeCluster`` through metadata), over one
    admin connection kept open between questions, so asking every second is cheap.

    A cluster's id changes only when it is a different cluster: a new Kafka
    installation, or the embedded broker started again (it gets a fresh id each
    start, as its log starts empty).
    """

    def __init__(self, bootstrap_servers: str, **client_options: Any) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_options = client_options
        self._admin: AIOKafkaAdminClient | None = None

    async def cluster_id(self) -> str:
        """The id of the cluster that answers now; raises ``KafkaError`` or ``OSError``
        when none does."""
        try:
            if self._admin is None:
                self._admin = AIOKafkaAdminClient(
                    bootstrap_servers=self._bootstrap_servers, **self._client_options
                )
                await self._admin.start()
            described = await self._admin.describe_cluster()
        except BaseException:
            await self.close()  # a fresh connection next time, to whichever broker answers
            raise
        return str(described["cluster_id"])

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()
