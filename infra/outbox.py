"""The transactional outbox and its relay.

Services never publish to Kafka from a request or handler. They call
:func:`enqueue` in the same PostgreSQL transaction as the state change, so an
event exists exactly when the change committed. The :class:`OutboxRelay`
then publishes pending rows in id order and marks them published.

* **Key order.** One relay per schema is active at a time (a PostgreSQL
  advisory lock elects it), and it publishes a batch in id order, waiting
  for the broker's acknowledgement before marking rows. Events with the same
  key therefore reach their partition in commit order.
* **Woken by commits, no busy polling, and no NOTIFY under load.** A writer
  in the relay's own process wakes it after its commit (:meth:`OutboxRelay.wake`,
  an in-process event), so what this process writes is published at once.
  For rows from other processes, while rows keep coming the relay polls every
  10 ms; after 200 ms without any it says so in ``outbox_relay`` and sleeps on
  ``LISTEN <schema>_outbox``, with a one-second safety poll (for a row
  committed just as it fell asleep). Only then does the insert trigger send
  ``NOTIFY``: NOTIFY makes committing transactions take turns, one WAL flush
  at a time, which capped the gateway.
* **Crash safety.** A row is marked only after Kafka acknowledged it, so a
  crash re-publishes at most the last batch; consumers de-duplicate by
  ``event_id`` (see :mod:`infra.inbox`).
* **A lost or replaced cluster.** The relay remembers the id of the Kafka
  cluster it publishes to (``outbox_relay.cluster_id``) and asks the cluster
  again before publishing, at most every safety poll and after any error.
  Finding another cluster (the embedded broker started again, a cluster that
  lost its log), it marks what it published within the retention as pending
  again (:func:`republish`), so it is published again in id order; consumers
  de-duplicate. Published rows are kept for :data:`RETENTION` for that
  (``OUTBOX_RETENTION_HOURS``), and purged in batches by :mod:`infra.retention`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

import asyncpg
import pydantic_core
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from infra.db import array_columns, init_connection
from infra.kafka_admin import ClusterIdentity
from infra.logging import get_logger
from infra.waiting import wait_at_most

log = get_logger(__name__)

# One statement for any number of events; ids follow the order given.
INSERT = """
INSERT INTO outbox (topic, key, payload, headers)
SELECT topic, key, payload, headers::jsonb
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) WITH ORDINALITY
    AS staged (topic, key, payload, headers, position)
ORDER BY position
"""
PENDING = """
SELECT id, topic, key, payload, headers FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT $1
"""
MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
BACKLOG = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
NEWEST = "SELECT max(id) FROM outbox"
PUBLISHED_UP_TO = """
SELECT NOT EXISTS (SELECT FROM outbox WHERE id <= $1 AND published_at IS NULL)
"""
SET_WAITING = "UPDATE outbox_relay SET waiting = $1"
REMEMBERED_CLUSTER = "SELECT cluster_id FROM outbox_relay"
REMEMBER_CLUSTER = "UPDATE outbox_relay SET cluster_id = $1"
REPUBLISH = """
WITH marked AS (
    UPDATE outbox SET published_at = NULL
    FROM (SELECT id, published_at FROM outbox WHERE published_at >= $1 FOR UPDATE) AS was
    WHERE outbox.id = was.id
    RETURNING was.published_at
)
SELECT count(*) AS rows, min(published_at) AS oldest FROM marked
"""
#: Since when the outbox holds every row it published: rows are purged only once
#: published longer than the retention ago, so from the oldest published row it
#: still holds, or from the retention's start, whichever is earlier.
HOLDS_SINCE = """
SELECT least(min(published_at), now() - $1::interval) FROM outbox WHERE published_at IS NOT NULL
"""
NOW_MINUS = "SELECT now() - $1::interval"
#: How long published rows are kept: the furthest back a lost cluster can be
#: recovered from (:func:`republish`).
RETENTION = timedelta(hours=24)
#: After its last row, the relay polls this often, this many times, before it
#: sleeps and asks writers to notify: ~10 ms more publishing latency under
#: traffic, in exchange for writers that never NOTIFY while traffic flows.
LINGER_POLL_SECONDS = 0.01
LINGER_POLLS = 20
#: Least time between two publishes while rows keep coming: woken by every commit, the
#: relay would otherwise send a batch per commit under load.
GATHER_SECONDS = 0.005
_PARTITIONER = DefaultPartitioner()


class OutboxEvent(Protocol):
    """What :func:`enqueue` needs of an event: the contracts' envelopes fit."""

    TOPIC: ClassVar[str]

    @property
    def type(self) -> str: ...

    @property
    def correlation_id(self) -> str: ...

    def key(self) -> str: ...

    def model_dump_json(self) -> str: ...


OutboxRow = tuple[str, str, bytes, str]
"""The outbox columns of one event: topic, key, payload (the event's JSON) and headers
(JSON text)."""


async def enqueue(connection: asyncpg.Connection, *events: OutboxEvent) -> None:
    """Stage events for publication in the caller's open transaction."""
    await enqueue_rows(connection, [outbox_row(event) for event in events])


async def enqueue_rows(connection: asyncpg.Connection, rows: Sequence[OutboxRow]) -> None:
    """:func:`enqueue` for events already serialised into their outbox columns."""
    assert connection.is_in_transaction(), "enqueue must share the state change's transaction"
    await connection.execute(INSERT, *array_columns(rows, width=4))


def outbox_row(event: OutboxEvent) -> OutboxRow:
    """The outbox columns of ``event``, also for code that writes the row itself inside
    a statement that must commit with it."""
    return (
        event.TOPIC,
        event.key(),
        event.model_dump_json().encode(),
        outbox_headers(event.type, event.correlation_id),
    )


def outbox_headers(event_type: str, correlation_id: str) -> str:
    """The headers column: what the relay sends as Kafka headers, as JSON text."""
    # pydantic-core's encoder: a fifth of json.dumps's time, which showed per result.
    return pydantic_core.to_json({"type": event_type, "correlation_id": correlation_id}).decode()


@dataclass
class Staged:
    """The newest outbox row a transaction staged (everything it staged is at or before
    it); None while it staged nothing. Every row it staged is after ``after_row_id``,
    the newest row before it (rows other transactions committed meanwhile may be
    between the two)."""

    row_id: int | None = None
    after_row_id: int = 0


@contextlib.asynccontextmanager
async def staging(connection: asyncpg.Connection, *, watch: bool = True) -> AsyncIterator[Staged]:
    """Around a transaction's work, inside the transaction: once the block is done,
    ``staged.row_id`` says whether the work staged events and which row to wait for
    after the commit (nothing is read when ``watch`` is False)."""
    staged = Staged()
    before: int | None = await connection.fetchval(NEWEST) if watch else None
    staged.after_row_id = before or 0
    yield staged
    if watch:
        after: int | None = await connection.fetchval(NEWEST)
        staged.row_id = after if after != before else None


async def wait_until_published(
    pool: asyncpg.Pool | asyncpg.Connection, outbox_id: int, *, poll_seconds: float = 0.005
) -> None:
    """Return once every row up to ``outbox_id`` is published (bound it with a timeout).
    A writer's commit wakes a sleeping relay, so this is milliseconds."""
    while not await pool.fetchval(PUBLISHED_UP_TO, outbox_id):  # noqa: ASYNC110 - another process publishes
        await asyncio.sleep(poll_seconds)


async def backlog(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(BACKLOG))


@dataclass(frozen=True)
class Republished:
    """What :func:`republish` marked pending again: how many rows, and when the oldest of
    them had been published (None when there were none)."""

    rows: int
    oldest: datetime | None


class TooFarBack(ValueError):
    """Asked to republish from before what the outbox still holds."""

    def __init__(self, since: datetime, holds_since: datetime) -> None:
        super().__init__(
            f"the outbox no longer holds every event published since {since.isoformat()}: "
            f"it can go back to {holds_since.isoformat()}"
        )
        self.holds_since = holds_since


async def holds_since(connection: asyncpg.Connection, retention: timedelta = RETENTION) -> datetime:
    """Since when the outbox in ``connection``'s schema holds every row it published."""
    oldest: datetime = await connection.fetchval(HOLDS_SINCE, retention)
    if oldest is None:  # nothing published yet: nothing was purged either
        oldest = await connection.fetchval(NOW_MINUS, retention)
    return oldest


async def republish(
    connection: asyncpg.Connection, since: datetime, retention: timedelta = RETENTION
) -> Republished:
    """Mark every row published since ``since`` as pending again, so the relay publishes
    it again in id order (after a Kafka cluster lost its log, or was replaced).

    Raises :class:`TooFarBack` when the outbox may already have purged rows
    published after ``since``.
    """
    oldest_held = await holds_since(connection, retention)
    if since < oldest_held:
        raise TooFarBack(since, oldest_held)
    row = await connection.fetchrow(REPUBLISH, since)
    return Republished(rows=int(row["rows"]), oldest=row["oldest"])


class OutboxRelay:
    """Publishes a schema's outbox rows to Kafka; run one per service process."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 2_000,
        safety_poll_seconds: float = 1.0,
        retention: timedelta = RETENTION,
        on_published: Callable[[int], None] | None = None,
        cluster: ClusterIdentity | None = None,
        on_new_cluster: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Up to ``batch_size`` rows are read, sent and marked at a time (a service that
        catches up writes thousands a second, and each batch waits for Kafka's
        acknowledgement); ``on_published`` is told how many rows each batch published
        (for metrics).

        With ``cluster``, the relay follows the cluster it publishes to: when its id
        is not the one remembered, ``on_new_cluster`` runs (the embedded stack
        creates the topics there) and the rows published within ``retention`` are
        published again."""
        self._dsn = dsn
        self._schema = schema
        self._producer = producer
        self._batch_size = batch_size
        self._safety_poll = safety_poll_seconds
        self._retention = retention
        self._on_published = on_published
        self._cluster = cluster
        self._on_new_cluster = on_new_cluster
        self._cluster_checked = -float("inf")
        self._published_at = -float("inf")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leading = False
        self._drain_requested = False
        self._drained = asyncio.Event()
        self.published = 0

    @property
    def channel(self) -> str:
        return f"{self._schema}_outbox"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._schema}")

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop; when this replica publishes, first let it publish what is pending for up to
        ``drain_seconds`` (a clean stop leaves nothing for the next start to send)."""
        if self._task is None:
            return
        if drain_seconds > 0 and self._leading and not self._task.done():
            self._drain_requested = True
            self._wake.set()
            if not await wait_at_most(self._drained, drain_seconds):
                log.warning("outbox.relay.drain_timed_out", schema=self._schema)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._cluster is not None:
            await self._cluster.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._serve()
            except (OSError, asyncpg.PostgresError, KafkaError) as error:
                log.warning(
                    "outbox.relay.retrying", schema=self._schema, error=str(error) or repr(error)
                )
                self._cluster_checked = -float("inf")  # the broker may have been replaced
                await asyncio.sleep(1.0)

    async def _serve(self) -> None:
        connection = await asyncpg.connect(
            self._dsn,
            server_settings={
                "search_path": self._schema,
                "application_name": f"{self._schema} outbox relay",
            },
        )
        try:
            await init_connection(connection)
            await self._become_leader(connection)
            self._leading = True
            await connection.add_listener(self.channel, self._on_notify)
            log.info("outbox.relay.started", schema=self._schema)
            while True:
                self._wake.clear()
                published = await self.publish_pending(connection)
                if self._drain_requested and published < self._batch_size:
                    self._drained.set()
                if published < self._batch_size:
                    await self._wait_for_rows(connection)
        finally:
            self._leading = False
            with contextlib.suppress(Exception):
                await connection.close()

    async def _wait_for_rows(self, connection: asyncpg.Connection) -> None:
        """Wait for new rows: polling briefly while they keep coming, then asleep until a
        writer notifies (or the safety poll). Writers notify only while the relay says it
        is asleep, so under steady traffic they never do."""
        for _ in range(LINGER_POLLS):
            # A commit in this process (:meth:`wake`) ends the wait at once.
            await wait_at_most(self._wake, LINGER_POLL_SECONDS)
            if self._drain_requested:
                return  # a stop waits: publish what is left, and say so, at once
            self._wake.clear()
            # Under load, commits come faster than batches are worth sending: publish at
            # most every GATHER_SECONDS, so batches stay big (quiet, this waits nothing).
            gathering = self._published_at + GATHER_SECONDS - time.monotonic()
            if gathering > 0:
                await asyncio.sleep(gathering)
            if await self.publish_pending(connection):
                return
        await connection.execute(SET_WAITING, True)
        try:
            # Rows committed while the flag was still off were not announced.
            if await self.publish_pending(connection) == 0:
                await wait_at_most(self._wake, self._safety_poll)
        finally:
            await connection.execute(SET_WAITING, False)

    async def _become_leader(self, connection: asyncpg.Connection) -> None:
        # Session-level lock: released by PostgreSQL if this process dies.
        while not await connection.fetchval(  # noqa: ASYNC110 - polling another process's lock
            "SELECT pg_try_advisory_lock(hashtext($1))", self.channel
        ):
            await asyncio.sleep(self._safety_poll)

    def wake(self) -> None:
        """Rows were committed: publish them now rather than at the next poll. Writers in
        this process call it after their commit; writers elsewhere NOTIFY."""
        self._wake.set()

    def _on_notify(self, *_: object) -> None:
        self.wake()

    async def follow_cluster(self, connection: asyncpg.Connection) -> None:
        """Ask the cluster its id; when it is not the one this schema's relay last published
        to, make the cluster ready (``on_new_cluster``) and mark the rows published within
        the retention pending again, so they are published again, in id order, before
        anything newer. The first cluster a relay ever meets is only remembered."""
        if self._cluster is None:
            return
        current = await self._cluster.cluster_id()
        self._cluster_checked = time.monotonic()
        remembered = await connection.fetchval(REMEMBERED_CLUSTER)
        if current == remembered:
            return
        if remembered is not None:
            if self._on_new_cluster is not None:
                await self._on_new_cluster()
            # Partition counts and leaders of the old cluster must not be used here.
            await self._producer.client.force_metadata_update()
        async with connection.transaction():
            if remembered is not None:
                since = await connection.fetchval(NOW_MINUS, self._retention)
                marked = await republish(connection, since, self._retention)
                log.warning(
                    "outbox.republishing",
                    schema=self._schema,
                    cluster_id=current,
                    previous_cluster_id=remembered,
                    rows=marked.rows,
                    published_since=marked.oldest.isoformat() if marked.oldest else None,
                    reason="the Kafka cluster is not the one last published to",
                )
            await connection.execute(REMEMBER_CLUSTER, current)

    async def publish_pending(self, connection: asyncpg.Connection) -> int:
        """Publish one batch of pending rows in id order; returns how many."""
        if time.monotonic() - self._cluster_checked >= self._safety_poll:
            await self.follow_cluster(connection)
        rows = await connection.fetch(PENDING, self._batch_size)
        if not rows:
            return 0
        await asyncio.gather(*await self._send_in_partition_batches(rows))
        await connection.execute(MARK_PUBLISHED, [row["id"] for row in rows])
        self._published_at = time.monotonic()
        self.published += len(rows)
        if self._on_published is not None:
            self._on_published(len(rows))
        log.debug("outbox.published", schema=self._schema, count=len(rows))
        return len(rows)

    async def _send_in_partition_batches(
        self, rows: list[asyncpg.Record]
    ) -> list[asyncio.Future[Any]]:
        """Hand ``rows`` to the producer as one record batch per partition (more when
        one fills up), in id order within each; the futures of their acknowledgements.

        ``send()`` per row cost more than anything else the relay does; building the
        batches here keeps the producer's partitioning (murmur2 of the key, as every
        Kafka client does) and each partition's order.
        """
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], BatchBuilder] = {}
        sent = []
        for row in rows:
            topic, key = row["topic"], row["key"].encode()
            if topic not in partitions:
                partitions[topic] = sorted(await self._producer.partitions_for(topic))
            partition = _PARTITIONER(key, partitions[topic], partitions[topic])
            headers = [(name, str(value).encode()) for name, value in row["headers"].items()]
            batch = open_batches.get((topic, partition))
            if batch is None or not batch.append(
                timestamp=None, key=key, value=row["payload"], headers=headers
            ):
                if batch is not None:  # full: send it, and start the next one
                    sent.append(await self._producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[topic, partition] = self._producer.create_batch()
                batch.append(timestamp=None, key=key, value=row["payload"], headers=headers)
        for (topic, partition), batch in open_batches.items():
            sent.append(await self._producer.send_batch(batch, topic, partition=partition))
        return sent
