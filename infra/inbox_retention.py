"""When an inbox row may go, and the inbox's purges (:mod:`infra.retention`).

An inbox row is what makes a redelivered event a no-op, so it may go only once
no redelivery of its event is possible. A copy of an event can come back from:

(a) **the topic's log**, while the broker still holds the message, when a group
    reads it again: its offsets were not yet committed past it (a crash between
    the effect's commit and the offset commit), they were reset or expired, a new
    group started, or an operator replayed from the beginning. Kafka deletes whole
    segments once their newest message is older than ``retention.ms``, so a
    message can stay up to ``retention.ms + segment.ms`` after it was produced
    (plus the broker's deletion check, minutes). Every inbox row is written after
    its message was produced, so that long after the row, (a) is over.
(b) **the producer's outbox**, which publishes again what it published within its
    retention when it meets a new cluster (:func:`infra.outbox.republish`): an
    event published at *P* can be published again until *P* + the outbox
    retention, and that copy then lives in the new log for (a)'s time.

So a row is kept for the topic's log time (``retention.ms + segment.ms``, read
from the broker at start-up where it answers, else the topic plan of these
settings) **plus** the outbox retention **plus** a margin
(``INBOX_RETENTION_MARGIN_HOURS``, for clocks, lag and the deletion check).
Where the consumer group's committed offset can be known, it must also be past
the row's event (the row records the partition and offset it was read at): a
group that has not committed past an event may still be handed it again. A
topic whose retention is infinite (``retention.ms`` -1) or that is compacted
keeps its rows for ever: a compacted topic keeps the last message per key for
ever, so a replay can redeliver an old event at any time. (No consumer of the
platform uses the inbox for a compacted topic: the lifecycle projections apply
a snapshot only when it is newer than what they hold, which is safe without.)

Offsets are compared only on the cluster that is current: after a cluster was
replaced, rows read from the old one may be compared with the new one's smaller
offsets. That can keep rows longer (safe) or let the offset condition pass for
an old row, which the time condition alone still covers: it was built for (b).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from contracts import TopicSpec
from infra.catchup import committed_offsets, consumer_options, partition_offsets
from infra.kafka_security import kafka_client_options
from infra.logging import get_logger
from infra.retention import Arguments, Purge
from infra.settings import ServiceSettings

log = get_logger(__name__)

#: Inbox rows of topic $2 processed longer than $3 ago whose event the consumer groups'
#: committed offsets are past: $4 and $5 are each partition and the least offset the
#: service's groups committed there. A row without a position was not claimed by a
#: consumer (time alone decides); a partition with no committed offset keeps its rows.
PURGE_INBOX = """
DELETE FROM inbox WHERE event_id = ANY (ARRAY(
    SELECT inbox.event_id FROM inbox
    LEFT JOIN unnest($4::int[], $5::bigint[]) AS committed (kafka_partition, kafka_offset)
        ON committed.kafka_partition = inbox.kafka_partition
    WHERE inbox.topic = $2 AND inbox.processed_at < now() - $3::interval
      AND (inbox.kafka_offset IS NULL OR inbox.kafka_offset < committed.kafka_offset)
    LIMIT $1
    FOR UPDATE OF inbox SKIP LOCKED
))
"""


@dataclass(frozen=True)
class LogTime:
    """How long a topic's log can hold a message: ``retention.ms`` and ``segment.ms``
    (None: for ever, a compacted topic or an infinite retention)."""

    retention_ms: int | None
    segment_ms: int

    @property
    def most(self) -> timedelta | None:
        if self.retention_ms is None:
            return None
        return timedelta(milliseconds=self.retention_ms + self.segment_ms)


#: Kafka's default ``segment.ms``, for a topic whose broker and plan say nothing.
KAFKA_DEFAULT_SEGMENT_MS = 7 * 24 * 3600 * 1000


def planned_log_time(spec: TopicSpec | None) -> LogTime:
    """What the topic plan says (``settings.topics()``); an unknown topic or one without a
    retention is taken to keep messages for ever."""
    if spec is None or spec.compacted or spec.retention_ms is None:
        return LogTime(None, 0)
    return LogTime(spec.retention_ms, spec.segment_ms or KAFKA_DEFAULT_SEGMENT_MS)


def log_time_from_configs(planned: LogTime, configs: Mapping[str, str]) -> LogTime:
    """The broker's answer for a topic, where it gave one, over the plan."""
    if "compact" in configs.get("cleanup.policy", ""):
        return LogTime(None, 0)
    retention = int(configs.get("retention.ms", planned.retention_ms or -1))
    segment = int(configs.get("segment.ms", planned.segment_ms))
    return LogTime(None if retention < 0 else retention, segment)


async def read_log_times(
    settings: ServiceSettings, topics: Iterable[str], *, timeout: float = 5.0
) -> dict[str, LogTime]:
    """Each topic's log time, as the broker says (``DescribeConfigs``) where it answers,
    else as the plan of ``settings`` says."""
    plan = {spec.name: spec for spec in settings.topics()}
    times = {topic: planned_log_time(plan.get(topic)) for topic in topics}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **kafka_client_options(settings)
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in times]
            )
    except (OSError, KafkaError, TimeoutError) as error:
        log.warning("retention.topic_configs_unavailable", error=str(error) or repr(error))
        return times
    finally:
        await admin.close()
    for response in responses:
        for code, _, _, topic, entries in response.resources:
            if code == 0 and topic in times:
                configs = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
                times[topic] = log_time_from_configs(times[topic], configs)
    return times


def inbox_retention(log_time: LogTime, settings: ServiceSettings) -> timedelta | None:
    """How long after processing an event its inbox row is kept (None: for ever)."""
    most = log_time.most
    if most is None:
        return None
    return (
        most
        + timedelta(hours=settings.outbox_retention_hours)
        + timedelta(hours=settings.inbox_retention_margin_hours)
    )


@dataclass
class InboxRetention:
    """The inbox purges of a service: one per consumed topic, from the groups consuming it."""

    settings: ServiceSettings
    groups: dict[str, set[str]] = field(default_factory=dict)
    """Each consumed topic and the consumer groups of this service that read it."""

    def consumed(self, group_id: str, topics: Iterable[str]) -> None:
        for topic in topics:
            self.groups.setdefault(topic, set()).add(group_id)

    async def purges(self) -> list[Purge]:
        """One purge per topic whose events stop being redeliverable; read at start-up."""
        if not self.groups:
            return []
        purges = []
        log_times = await read_log_times(self.settings, sorted(self.groups))
        for topic, log_time in log_times.items():
            keep = inbox_retention(log_time, self.settings)
            log.info(
                "retention.inbox",
                topic=topic,
                keep_hours=None if keep is None else round(keep.total_seconds() / 3600, 3),
                log_retention_ms=log_time.retention_ms,
                segment_ms=log_time.segment_ms,
            )
            if keep is not None:
                purges.append(Purge(f"inbox:{topic}", PURGE_INBOX, self._arguments(topic, keep)))
        return purges

    def _arguments(self, topic: str, keep: timedelta) -> Arguments:
        async def arguments() -> Sequence[object] | None:
            committed = await self.committed(topic)
            if committed is None:
                return None
            partitions = sorted(committed)
            return (topic, keep, partitions, [committed[p] for p in partitions])

        return arguments

    async def committed(self, topic: str, *, timeout: float = 10.0) -> dict[int, int] | None:
        """For each partition of ``topic``, the least offset this service's groups committed
        there (a partition where one of them committed none is left out: its rows stay);
        None when Kafka did not answer, and the inbox keeps everything this round."""
        options = consumer_options(self.settings)
        least: dict[int, int] = {}
        uncommitted: set[int] = set()
        try:
            async with asyncio.timeout(timeout):
                _, ends = await partition_offsets(options, [topic])
                for group in sorted(self.groups.get(topic, ())):
                    for tp, offset in (await committed_offsets(options, group, ends)).items():
                        if offset is None:
                            uncommitted.add(tp.partition)
                        else:
                            least[tp.partition] = min(offset, least.get(tp.partition, offset))
        except (OSError, KafkaError, TimeoutError) as error:
            log.warning(
                "retention.offsets_unavailable", topic=topic, error=str(error) or repr(error)
            )
            return None
        return {p: offset for p, offset in least.items() if p not in uncommitted}
