"""Where consumer groups stand against the end of their topics.

Two readers share one technique: a short-lived consumer without a group reads
the partitions' end offsets, and one that names a group without subscribing
reads the group's committed offsets (it neither joins nor rebalances it).

* :class:`CatchUp`, the readiness of a projection. At start-up we note each
  partition's end offset; the projection is caught up once the group's
  committed offsets reach those marks. It then stays ready: later lag is
  normal operation, not a reason to leave the load balancer.
* :class:`ConsumerLag`, the lag metric: per group and topic, the records
  produced that the group has not committed yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka.security import parse_security

from infra.batching import Coalescer
from infra.kafka_security import broker_security
from infra.logging import get_logger
from infra.settings import ServiceSettings

log = get_logger(__name__)

_PARTITIONER = DefaultPartitioner()


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a short-lived consumer.

    aiokafka's ``stop()`` can re-raise the CancelledError of its own internal
    offset-reset task when stopped soon after starting; that says nothing about
    our task, so it is swallowed unless our task is really being cancelled.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


def consumer_options(settings: ServiceSettings) -> dict[str, Any]:
    """Bootstrap servers and security for the short-lived consumers of this module."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "enable_auto_commit": False,
        **parse_security(broker_security(settings)),
    }


async def partition_offsets(
    options: dict[str, Any], topics: Iterable[str]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The first and the end offset of every partition of ``topics`` that exists."""
    consumer = AIOKafkaConsumer(**options)
    try:
        await consumer.start()
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return {}, {}
        return (
            await consumer.beginning_offsets(partitions),
            await consumer.end_offsets(partitions),
        )
    finally:
        await stop_consumer(consumer)


async def committed_offsets(
    options: dict[str, Any], group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of each partition; ``None`` where it committed none."""
    reader = AIOKafkaConsumer(group_id=group_id, **options)
    try:
        await reader.start()
        return {tp: await reader.committed(tp) for tp in partitions}
    finally:
        await stop_consumer(reader)


class CatchUp:
    def __init__(self, settings: ServiceSettings, group_id: str, topics: list[str]) -> None:
        self._options = consumer_options(settings)
        self._group_id = group_id
        self._topics = topics
        self._marks: dict[TopicPartition, int] | None = None
        self._caught_up = False

    async def mark(self) -> None:
        """Remember where the topics end now."""
        _, ends = await partition_offsets(self._options, self._topics)
        self._marks = {tp: offset for tp, offset in ends.items() if offset > 0}

    async def caught_up(self) -> bool:
        if self._caught_up:
            return True
        if self._marks is None:
            return False
        if self._marks:
            committed = await committed_offsets(self._options, self._group_id, self._marks)
            if any(offset is None or offset < self._marks[tp] for tp, offset in committed.items()):
                return False
        self._caught_up = True
        return True


#: ``(group, topic)`` → records produced to the topic that the group has not committed.
Lag = dict[tuple[str, str], int]


class ConsumerLag:
    """Reads the lag of the consumer groups a service runs, cheaply enough to scrape.

    A reading takes at most ``timeout`` seconds and is reused for ``max_age``
    seconds, so frequent scrapes (or several Prometheus servers) do not each
    open Kafka connections. A partition the group never committed counts from
    its first offset, which is where the service's ``earliest`` groups start.
    """

    def __init__(
        self, settings: ServiceSettings, *, timeout: float = 2.0, max_age: float = 5.0
    ) -> None:
        self._options = consumer_options(settings)
        self._timeout = timeout
        self._max_age = max_age
        self.groups: dict[str, tuple[str, ...]] = {}
        self._lock = asyncio.Lock()
        self._read_at: float | None = None
        self._last: Lag | None = None

    def watch(self, group_id: str, topics: Sequence[str]) -> None:
        self.groups[group_id] = (*self.groups.get(group_id, ()), *topics)

    async def read(self) -> Lag | None:
        """The lag per group and topic, or ``None`` when Kafka did not answer in time."""
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if self._read_at is None or now - self._read_at >= self._max_age:
                self._last = await self._read_now()
                self._read_at = now
            return self._last

    async def _read_now(self) -> Lag | None:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._lag()
        except (OSError, KafkaError, TimeoutError) as error:
            log.warning(
                "metrics.consumer_lag_unavailable", error=str(error) or type(error).__name__
            )
            return None

    async def _lag(self) -> Lag:
        topics = {topic for topics in self.groups.values() for topic in topics}
        firsts, ends = await partition_offsets(self._options, sorted(topics))
        lag: Lag = {}
        for group_id, group_topics in self.groups.items():
            partitions = [tp for tp in ends if tp.topic in group_topics]
            if not partitions:
                continue
            committed = await committed_offsets(self._options, group_id, partitions)
            for tp, offset in committed.items():
                behind = ends[tp] - (firsts[tp] if offset is None else offset)
                lag[group_id, tp.topic] = lag.get((group_id, tp.topic), 0) + max(behind, 0)
        return lag


#: How often :meth:`GroupProgress.consumed` reads a group's committed offsets again.
PROGRESS_POLL_SECONDS = 0.005


#: The states of a consumer group between two stable ones (KIP-848's are named alike).
REBALANCING_STATES = frozenset(
    {"PreparingRebalance", "CompletingRebalance", "Reconciling", "Assigning"}
)


async def started(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """``consumer`` started; closed again when it cannot start (the broker is away), so
    nothing is left open behind the error."""
    try:
        await consumer.start()
    except BaseException:
        await stop_consumer(consumer)
        raise
    return consumer


class GroupProgress:
    """Waits until a consumer group has consumed what was produced before a moment.

    This is how one service reads another's writes without sharing its database.
    The rules service answers a change only once the gateway's projection has
    consumed it, and the gateway answers "pending" only once its results consumer
    has consumed every result the ledger had published when the question came: a
    partner whose callback says "succeeded" then never reads "pending".

    :meth:`consumed` notes where the partitions end now, then reads the group's
    committed offsets until they reach those marks. A consumer commits its offsets
    after the transaction that applied them, so a reached mark means the effect is
    in the reader's database. Two long-lived connections serve every caller (one
    reads end offsets; one per group names the group without joining it and reads
    its commits), and concurrent callers share their reads: callers arriving while
    a read is in flight go together in the next one, so a flood of questions costs
    about one Kafka round trip per round, not one per question.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self._options = consumer_options(settings)
        self._start_lock = asyncio.Lock()
        self._ends_reader: AIOKafkaConsumer | None = None
        self._group_readers: dict[str, AIOKafkaConsumer] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._ends: Coalescer[TopicPartition, int] = Coalescer(
            self._read_ends, max_batch=10_000, max_in_flight=1
        )
        self._commits: Coalescer[tuple[str, TopicPartition], int] = Coalescer(
            self._read_commits, max_batch=10_000, max_in_flight=1
        )

    async def partitions(self, topic: str) -> list[TopicPartition]:
        """Every partition of ``topic`` (none while it does not exist)."""
        reader = await self._ends_reader_started()
        numbers = reader.partitions_for_topic(topic)
        if numbers is None:
            await reader.topics()  # a topic created since the reader started
            numbers = reader.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, number) for number in sorted(numbers)]

    async def partition_of(self, topic: str, key: str) -> TopicPartition | None:
        """The partition a message with ``key`` goes to (as every Kafka producer picks it)."""
        numbers = [tp.partition for tp in await self.partitions(topic)]
        if not numbers:
            return None
        return TopicPartition(topic, _PARTITIONER(key.encode(), numbers, numbers))

    async def is_consuming(self, group_id: str) -> bool:
        """Whether the group has members now (a group nobody runs is never waited for).

        A group that is rebalancing (a replica joining or leaving, or its consumer
        starting again) still runs: it goes on consuming once the rebalance is over, so
        it is waited for. Only an empty or dead group is not.
        """
        async with self._start_lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**_admin_options(self._options))
                await admin.start()
                self._admin = admin
        (response,) = await self._admin.describe_consumer_groups([group_id])
        group = response.to_object()["groups"][0]
        if group["error_code"] != 0:
            return False
        if group["state"] in REBALANCING_STATES:
            return True
        return bool(group["state"] == "Stable" and group["members"])

    async def consumed(
        self, group_id: str, partitions: Sequence[TopicPartition], *, timeout: float
    ) -> bool:
        """True once ``group_id`` has committed, on each of ``partitions``, everything
        produced to it before this call; False when ``timeout`` passes first or Kafka
        does not answer."""
        try:
            async with asyncio.timeout(timeout):
                marks = {}
                for tp, end in zip(
                    partitions,
                    await asyncio.gather(*(self._ends.submit(tp) for tp in partitions)),
                    strict=True,
                ):
                    if end > 0:
                        marks[tp] = end
                while marks:
                    commits = await asyncio.gather(
                        *(self._commits.submit((group_id, tp)) for tp in marks)
                    )
                    for tp, committed in zip(list(marks), commits, strict=True):
                        if committed >= marks[tp]:
                            del marks[tp]
                    if marks:
                        await asyncio.sleep(PROGRESS_POLL_SECONDS)
                return True
        except (OSError, KafkaError, TimeoutError) as error:
            log.info(
                "catchup.not_consumed_in_time",
                group=group_id,
                timeout=timeout,
                error=str(error) or type(error).__name__,
            )
            return False

    async def stop(self) -> None:
        readers = [self._ends_reader, *self._group_readers.values()]
        admin, self._admin = self._admin, None
        self._ends_reader, self._group_readers = None, {}
        for reader in readers:
            if reader is not None:
                await stop_consumer(reader)
        if admin is not None:
            await admin.close()

    async def _ends_reader_started(self) -> AIOKafkaConsumer:
        async with self._start_lock:
            if self._ends_reader is None:
                reader = await started(AIOKafkaConsumer(**self._options))
                self._ends_reader = reader
            return self._ends_reader

    async def _group_reader(self, group_id: str) -> AIOKafkaConsumer:
        async with self._start_lock:
            reader = self._group_readers.get(group_id)
            if reader is None:
                reader = await started(AIOKafkaConsumer(group_id=group_id, **self._options))
                self._group_readers[group_id] = reader
            return reader

    async def _read_ends(self, partitions: list[TopicPartition]) -> list[int]:
        reader = await self._ends_reader_started()
        ends = await reader.end_offsets(sorted(set(partitions)))
        return [ends[tp] for tp in partitions]

    async def _read_commits(self, asked: list[tuple[str, TopicPartition]]) -> list[int]:
        distinct = sorted(set(asked))
        readers = {group: await self._group_reader(group) for group, _ in distinct}
        commits = await asyncio.gather(*(readers[group].committed(tp) for group, tp in distinct))
        by_key = {key: committed or 0 for key, committed in zip(distinct, commits, strict=True)}
        return [by_key[key] for key in asked]


def _admin_options(options: dict[str, Any]) -> dict[str, Any]:
    """The consumer options an admin client takes too (all but the consumer's own)."""
    return {name: value for name, value in options.items() if name != "enable_auto_commit"}
