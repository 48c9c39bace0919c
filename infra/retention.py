"""Every table that grows with traffic is bounded: named purges, run in small batches.

A service registers its purges with its runtime (``runtime.retention.add``); each
is one ``DELETE`` statement that removes **one small batch** of rows past their
retention (``$1`` is the batch size, its own arguments follow) and picks its
rows with ``LIMIT … FOR UPDATE SKIP LOCKED``. :class:`Retention`, a
:class:`~infra.periodic.Periodic` every replica runs, repeats each purge until a
batch comes back short, then sleeps until the next interval. So no purge holds
many locks or a long transaction, and replicas purging at once skip the rows the
other holds rather than wait for them: they share the work and count each row
once. The runtime registers the outbox's and the inbox's purges for every
service; each service adds its own tables'.

The inbox (decision 0021)
-------------------------

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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from contracts import TopicSpec
from infra.catchup import committed_offsets, consumer_options, partition_offsets
from infra.kafka_security import kafka_client_options
from infra.logging import get_logger
from infra.metrics import ServiceMetrics
from infra.periodic import Periodic
from infra.settings import ServiceSettings

log = get_logger(__name__)

#: Published outbox rows past the retention ($2), oldest first. The bound is the first row
#: still needed (pending, or published within the retention), found by walking the
#: primary key from the start: rows are published in id order, so the walk is as long as
#: what there is to purge, and no index on ``published_at`` is needed on the hot path.
PURGE_OUTBOX = """
DELETE FROM outbox WHERE id = ANY (ARRAY(
    SELECT id FROM outbox
    WHERE id < coalesce(
            (SELECT id FROM outbox
             WHERE published_at IS NULL OR published_at >= now() - $2::interval
             ORDER BY id LIMIT 1),
            9223372036854775807)
      AND published_at < now() - $2::interval
    ORDER BY id LIMIT $1
    FOR UPDATE SKIP LOCKED
))
"""
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
#: Each table of the service's schema: estimated rows (as of the last ANALYZE or
#: autovacuum, -1 when never analysed) and bytes on disk with its indexes and TOAST.
TABLE_SIZES = """
SELECT c.relname AS name, c.reltuples::bigint AS rows, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""

#: Arguments of a purge after the batch size; None skips this round (not known now).
Arguments = Callable[[], Awaitable[Sequence[object] | None]]


@dataclass(frozen=True)
class Purge:
    """One named purge: ``statement`` deletes one batch of at most ``$1`` rows; its other
    parameters are ``arguments``, fixed or read before each round."""

    name: str
    statement: str
    arguments: Sequence[object] | Arguments = ()

    async def read_arguments(self) -> Sequence[object] | None:
        if callable(self.arguments):
            return await self.arguments()
        return self.arguments


async def purge_in_batches(
    pool: asyncpg.Pool, statement: str, *arguments: object, batch_size: int
) -> int:
    """Run ``statement`` (``$1`` the batch size) until a batch deletes fewer than
    ``batch_size`` rows; how many it deleted. Each batch commits on its own."""
    purged = 0
    while True:
        status: str = await pool.execute(statement, batch_size, *arguments)
        deleted = int(status.split()[-1])
        purged += deleted
        if deleted < batch_size:
            return purged
        await asyncio.sleep(0)  # let the process's own work in between batches


class Retention(Periodic):
    """Runs a service's purges every ``retention_interval_seconds``, each to the end."""

    name = "retention"

    def __init__(
        self,
        pool_of: Callable[[], asyncpg.Pool],
        *,
        interval: float,
        batch_size: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        super().__init__(interval=interval)
        self._pool_of = pool_of
        self._batch_size = batch_size
        self._metrics = metrics
        self.purges: list[Purge] = []
        #: The purges of the shared tables (outbox, inbox), set again at each start.
        self.infrastructure: list[Purge] = []

    def add(self, *purges: Purge) -> None:
        """Register a service's own purges (before the runtime starts)."""
        self.purges.extend(purges)

    async def once(self) -> int:
        total = 0
        for purge in [*self.infrastructure, *self.purges]:
            arguments = await purge.read_arguments()
            if arguments is None:
                continue
            purged = await purge_in_batches(
                self._pool_of(), purge.statement, *arguments, batch_size=self._batch_size
            )
            if purged:
                log.info("retention.purged", purge=purge.name, rows=purged)
            if self._metrics is not None:
                self._metrics.count_purged(purge.name, purged)
            total += purged
        return total


def outbox_purge(retention: timedelta) -> Purge:
    """Published outbox rows older than ``retention`` (what :func:`infra.outbox.republish`
    may still need is kept)."""
    return Purge("outbox", PURGE_OUTBOX, (retention,))


# --- the inbox ----------------------------------------------------------------------


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
                purges.append(
                    Purge(f"inbox:{topic}", PURGE_INBOX, self._arguments(topic, keep))
                )
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


# --- table sizes ----------------------------------------------------------------------


class TableSizes:
    """Reads the service's table sizes for ``/metrics``, at most every ``max_age`` seconds
    (``pg_class`` and the relation sizes are cheap, but not free on every scrape)."""

    def __init__(
        self, pool_of: Callable[[], asyncpg.Pool], metrics: ServiceMetrics, *, max_age: float = 10.0
    ) -> None:
        self._pool_of = pool_of
        self._metrics = metrics
        self._max_age = max_age
        self._read_at: float | None = None

    async def read(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._read_at is not None and now - self._read_at < self._max_age:
            return
        try:
            async with asyncio.timeout(2.0):
                rows: list[Any] = await self._pool_of().fetch(TABLE_SIZES)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.warning("metrics.table_sizes_unavailable", error=str(error))
            self._metrics.set_table_sizes(None)
            return
        except RuntimeError:  # not started: nothing to report yet
            return
        self._read_at = now
        self._metrics.set_table_sizes(
            {row["name"]: (max(row["rows"], 0), row["bytes"]) for row in rows}
        )
