"""Consuming topics in batches, with every failure isolated to the message that caused it.

Every consumer of the platform is registered with :func:`consume_in_batches`.
It hands the service's handler a batch of events (the handler applies them in
one transaction of its own, made idempotent by the inbox) and decides what a
failure means:

* **Transient** (:func:`is_transient`: the database or broker is away, a
  timeout, a lock or serialisation conflict, a statement the schema does not
  know yet): nothing is wrong with the messages. The batch is refused after a
  growing pause and delivered again, for ever; nothing is quarantined.
* **Deterministic** (anything else: the message is not JSON, breaks its
  contract, or the database refuses its values): the batch is cut in halves
  and each applied on its own, down to the messages that fail alone. Each of
  those is tried :data:`ATTEMPTS` times, then quarantined
  (:mod:`infra.quarantine`): kept in the service's database with its bytes and
  error, and copied to the topic's dead-letter topic. The rest of the batch is
  applied, and the batch's offsets are committed, so the partition moves on.

A message that does not parse is quarantined at once: no attempt can change
that. Readers are tolerant: an event that carries fields this code does not
know is read without them (a newer producer may have added them), and only a
message that really breaks the contract is refused.

A broker replaced under a running consumer (a Kafka cluster that lost its log,
the embedded broker started again) does not know the consumer's group: the
next heartbeat fails, the consumer rejoins and, finding no committed offsets,
reads from the earliest offset (``auto_offset_reset="earliest"``, which also
resets a position past the end of the new, shorter log). What the outbox
relays publish again then arrives a second time and the inboxes drop it
(see :mod:`infra.outbox`).

With ``environments``, each environment gets a consumer group of its own
(``<group>.<environment>``) that skips the other environments' messages, so a
staging flood or a staging poison message never delays production, and an
operator can run a process for one environment only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args
from uuid import UUID

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel, ValidationError

from contracts import Environment, environment_group
from infra import inbox, quarantine
from infra.errors import is_transient
from infra.logging import get_logger

log = get_logger(__name__)

ENVIRONMENTS: tuple[str, ...] = get_args(Environment)

E = TypeVar("E", bound=BaseModel)

#: Most messages a consumer takes in one batch, unless it says otherwise.
BATCH_MAX_RECORDS = 500
#: How long a batch consumer's poll waits for records before it gives up. FastStream
#: then sleeps as long again before its next poll, and a record that arrives in that
#: sleep waits for it: its 200 ms default cost ~100 ms a hop at low rates. An empty
#: poll reads the client's buffer, not the network, so a short one is cheap.
BATCH_TIMEOUT_MS = 20
#: How often a message that fails alone is tried before it is quarantined.
ATTEMPTS = 3
#: Pauses between those attempts, and before a transient failure's redelivery.
RETRY_FIRST_SECONDS = 0.05
TRANSIENT_FIRST_SECONDS = 0.2
TRANSIENT_MOST_SECONDS = 10.0


class Backoff:
    """Growing pauses between redeliveries of a batch that keeps failing transiently."""

    def __init__(
        self, first: float = TRANSIENT_FIRST_SECONDS, most: float = TRANSIENT_MOST_SECONDS
    ) -> None:
        self._first = first
        self._most = most
        self._next = first

    def reset(self) -> None:
        self._next = self._first

    async def wait(self) -> None:
        await asyncio.sleep(self._next)
        self._next = min(self._next * 2, self._most)


#: A consumer's fetch wait once its records stopped, or while they flood in: aiokafka's
#: and Kafka's default.
IDLE_FETCH_WAIT_MS = 500
#: How long after its last batch a consumer still counts as busy.
ACTIVE_SECONDS = 2.0
#: Records flood in from this many a second (or a batch this big): fetch with the long
#: wait, so batches grow and each transaction carries more. Below TRICKLE_RATE a second
#: (and TRICKLE_BATCH a batch), the short wait again. At 100 a second the short wait
#: cost more CPU than the waits it saved (docs/performance.md).
FLOOD_RATE = 40.0
TRICKLE_RATE = 20.0
FLOOD_BATCH = 16
TRICKLE_BATCH = 4
#: The rate is counted over the batches of this last stretch of time.
RATE_WINDOW_SECONDS = 1.0


class FetchWait:
    """How long a consumer's fetches wait at the broker for records: ``active_ms`` while
    its records trickle in, :data:`IDLE_FETCH_WAIT_MS` while they flood in
    (:data:`FLOOD_RATE` a second or :data:`FLOOD_BATCH` a batch, until both are under
    :data:`TRICKLE_RATE` and :data:`TRICKLE_BATCH`) and once none came for
    :data:`ACTIVE_SECONDS`.

    On a broker that answers a waiting fetch only as slices of the wait end (the
    embedded Tansu, see :mod:`infra.dev.kafka`), the wait bounds how late a record
    reaches its consumer: a short one costs an idle consumer a fetch every few
    milliseconds, and a flooded one many small batches, a transaction each, which took
    throughput from the gateway beside it. So the short wait is kept for consumers with
    light traffic, where it is what a record waits. aiokafka reads the wait from its
    fetcher as it builds each fetch request and has no public setter: this sets the
    fetcher's attribute (aiokafka is pinned, and a test checks it holds).
    """

    def __init__(
        self,
        active_ms: int,
        *,
        idle_ms: int = IDLE_FETCH_WAIT_MS,
        active_seconds: float = ACTIVE_SECONDS,
    ) -> None:
        self.active_ms = active_ms
        self.idle_ms = idle_ms
        self._active_seconds = active_seconds
        self._last_batch = 0.0
        self._recent: deque[tuple[float, int]] = deque()  # (when, records) of each batch
        self._flooded = False
        self._fetcher: Any = None
        self._cooling: asyncio.TimerHandle | None = None

    @property
    def current_ms(self) -> int | None:
        """The wait the consumer's next fetch asks for; None before its first batch."""
        return None if self._fetcher is None else int(self._fetcher._fetch_max_wait_ms)

    def records_arrived(self, consumer: Any, count: int) -> None:
        """A batch of ``count`` records came: set the wait its traffic calls for."""
        now = self._last_batch = time.monotonic()
        if self.active_ms >= self.idle_ms:
            return
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
            return
        self._fetcher = fetcher
        rate = self._rate(now, count)
        if count >= FLOOD_BATCH or rate >= FLOOD_RATE:
            self._flooded = True
        elif count < TRICKLE_BATCH and rate < TRICKLE_RATE:
            self._flooded = False
        fetcher._fetch_max_wait_ms = self.idle_ms if self._flooded else self.active_ms
        if self._cooling is None:
            self._cooling = asyncio.get_running_loop().call_later(self._active_seconds, self._cool)

    def _rate(self, now: float, count: int) -> float:
        """Records a second over the last :data:`RATE_WINDOW_SECONDS`, this batch's too."""
        self._recent.append((now, count))
        while self._recent[0][0] <= now - RATE_WINDOW_SECONDS:
            self._recent.popleft()
        return sum(records for _, records in self._recent) / RATE_WINDOW_SECONDS

    def _cool(self) -> None:
        quiet_for = time.monotonic() - self._last_batch
        if quiet_for < self._active_seconds:
            self._cooling = asyncio.get_running_loop().call_later(
                self._active_seconds - quiet_for, self._cool
            )
            return
        self._cooling = None
        self._flooded = False
        self._fetcher._fetch_max_wait_ms = self.idle_ms


Handler = Callable[[list[E]], Awaitable[None]]
#: Called in the quarantine's transaction with the event that was quarantined
#: (the ledger gives its request a terminal failed result there); returns the
#: resolution to record ("failed"), or None to leave it waiting for a replay.
OnQuarantine = Callable[[asyncpg.Connection, E], Awaitable[str | None]]
#: Which environment a record belongs to, read cheaply before parsing (from the
#: key of a topic keyed by member); None when only the event can tell.
EnvironmentOf = Callable[[ConsumerRecord[Any, Any]], str | None]


@dataclass(frozen=True)
class Delivered(Generic[E]):
    """A record that parsed, with its event."""

    record: ConsumerRecord[Any, Any]
    event: E


@dataclass(frozen=True)
class Refused(Generic[E]):
    """A record to quarantine, with its event when it parsed, and why."""

    record: ConsumerRecord[Any, Any]
    event: E | None
    refusal: quarantine.Refusal

    def message(self) -> quarantine.Message:
        return quarantine.Message(self.record, self.refusal, getattr(self.event, "event_id", None))


class Consumer(Generic[E]):
    """One consumer group's processing of its batches: parse, apply, isolate, quarantine.

    ``models`` maps each topic to the event class its messages parse into;
    ``pool`` gives the service's connection pool (it exists once the service
    has started); ``on_quarantined`` is told the topic of each message
    quarantined (the metric).
    """

    def __init__(
        self,
        *,
        group_id: str,
        models: Mapping[str, type[E]],
        handler: Handler[E],
        pool: Callable[[], asyncpg.Pool],
        environment: str | None = None,
        environment_of: EnvironmentOf | None = None,
        on_quarantine: OnQuarantine[E] | None = None,
        on_quarantined: Callable[[str], None] | None = None,
        attempts: int = ATTEMPTS,
        retry_first_seconds: float = RETRY_FIRST_SECONDS,
        backoff: Backoff | None = None,
        active_fetch_wait_ms: int = IDLE_FETCH_WAIT_MS,
    ) -> None:
        self.group_id = group_id
        self.fetch_wait = FetchWait(active_fetch_wait_ms)
        self._models = models
        self._handler = handler
        self._pool = pool
        self._environment = environment
        self._environment_of = environment_of
        self._on_quarantine = on_quarantine
        self._on_quarantined = on_quarantined
        self._attempts = attempts
        self._retry_first = retry_first_seconds
        self._backoff = backoff or Backoff()

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """Apply a batch: when this returns, every record of this consumer's environment
        was applied or quarantined, and the offsets may be committed. Raises (after a
        pause) only for a transient failure, to have the batch delivered again."""
        try:
            delivered = await self._parse(records)
            await self._apply(delivered)
        except Exception as error:
            if not is_transient(error):
                raise
            log.warning(
                "consumer.batch.retrying",
                group=self.group_id,
                records=len(records),
                error=str(error) or type(error).__name__,
            )
            await self._backoff.wait()
            raise
        self._backoff.reset()

    async def _parse(self, records: Sequence[ConsumerRecord[Any, Any]]) -> list[Delivered[E]]:
        delivered: list[Delivered[E]] = []
        unreadable: list[Refused[E]] = []
        for record in records:
            if not self._mine_by_key(record):
                continue
            try:
                event = read_event(self._models[record.topic], record.value)
            except (ValidationError, KeyError) as error:
                unreadable.append(Refused(record, None, quarantine.Refusal(error, attempts=1)))
                continue
            if self._environment is None:
                delivered.append(Delivered(record, event))
                continue
            keyed, environment = self._keyed_environment(record), _environment(event)
            if keyed is not None and environment != keyed:
                # Its key sent it to this environment's consumers, its envelope says
                # another: no consumer would take it, so it must not pass unseen.
                mismatch = ValueError(f"keyed for {keyed}, but its environment is {environment}")
                unreadable.append(Refused(record, event, quarantine.Refusal(mismatch, 1)))
            elif environment == self._environment:
                delivered.append(Delivered(record, event))
        # All in one transaction: a flood of garbage costs one commit a batch.
        await self._quarantine(unreadable)
        return delivered

    def _keyed_environment(self, record: ConsumerRecord[Any, Any]) -> str | None:
        return None if self._environment_of is None else self._environment_of(record)

    def _mine_by_key(self, record: ConsumerRecord[Any, Any]) -> bool:
        if self._environment is None:
            return True
        environment = self._keyed_environment(record)
        return environment is None or environment == self._environment

    async def _apply(self, delivered: list[Delivered[E]]) -> None:
        """Apply ``delivered``; on a deterministic failure, each half on its own."""
        if not delivered:
            return
        try:
            with inbox.delivered_from(_positions(delivered)):
                await self._handler([item.event for item in delivered])
            return
        except Exception as error:
            if is_transient(error):
                raise
            if len(delivered) == 1:
                await self._retry_then_quarantine(delivered[0], error)
                return
            log.info(
                "consumer.batch.narrowing",
                group=self.group_id,
                records=len(delivered),
                error=str(error) or type(error).__name__,
            )
        middle = len(delivered) // 2
        await self._apply(delivered[:middle])
        await self._apply(delivered[middle:])

    async def _retry_then_quarantine(self, item: Delivered[E], error: Exception) -> None:
        pause = self._retry_first
        for _ in range(self._attempts - 1):
            await asyncio.sleep(pause)
            pause *= 2
            try:
                with inbox.delivered_from(_positions([item])):
                    await self._handler([item.event])
                return
            except Exception as again:
                if is_transient(again):
                    raise
                error = again
        await self._quarantine(
            [Refused(item.record, item.event, quarantine.Refusal(error, self._attempts))]
        )

    async def _quarantine(self, refused: list[Refused[E]]) -> None:
        """Quarantine ``refused`` in one transaction, then log and count each."""
        if not refused:
            return
        kept = []
        async with self._pool().acquire() as connection, connection.transaction():
            quarantine_ids = await quarantine.quarantine(
                connection, [item.message() for item in refused], consumer=self.group_id
            )
            for item, quarantine_id in zip(refused, quarantine_ids, strict=True):
                if quarantine_id is None:
                    continue  # another environment's consumer of this service kept it
                resolution = None
                if item.event is not None and self._on_quarantine is not None:
                    resolution = await self._resolve(connection, quarantine_id, item.event)
                kept.append((quarantine_id, item, resolution))
        for quarantine_id, item, resolution in kept:
            self._report(quarantine_id, item, resolution)

    def _report(self, quarantine_id: int, item: Refused[E], resolution: str | None) -> None:
        record, refusal = item.record, item.refusal
        log.error(
            "message.quarantined",
            quarantine_id=quarantine_id,
            group=self.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            event_id=str(item.message().event_id) if item.event is not None else None,
            error_type=refusal.error_type,
            error=refusal.text,
            attempts=refusal.attempts,
            resolution=resolution,
        )
        if self._on_quarantined is not None:
            self._on_quarantined(record.topic)

    async def _resolve(
        self, connection: asyncpg.Connection, quarantine_id: int, event: E
    ) -> str | None:
        assert self._on_quarantine is not None
        try:
            # A savepoint: if even this fails, the message is still kept.
            async with connection.transaction():
                resolution = await self._on_quarantine(connection, event)
        except Exception as error:
            if is_transient(error):
                raise
            log.error(
                "message.quarantine_resolution_failed",
                quarantine_id=quarantine_id,
                error=str(error) or type(error).__name__,
            )
            return None
        if resolution is not None:
            await quarantine.resolve(connection, quarantine_id, resolution)
        return resolution


def _positions(delivered: Sequence[Delivered[Any]]) -> dict[UUID, inbox.Position]:
    """Where each delivered event was read, for its inbox row (:func:`inbox.delivered_from`)."""
    positions = {}
    for item in delivered:
        event_id = getattr(item.event, "event_id", None)
        if isinstance(event_id, UUID):
            positions[event_id] = (item.record.partition, item.record.offset)
    return positions


def read_event(model: type[E], value: bytes | None) -> E:
    """A message's event, read as a tolerant reader does: fields this code does not know
    (a newer producer's additions) are left out rather than refused. Writers stay strict:
    the contracts themselves forbid unknown fields."""
    return model.model_validate_json(value or b"", extra="ignore")


def _environment(event: BaseModel) -> str | None:
    environment = getattr(event, "environment", None)
    return environment if isinstance(environment, str) else None


def environment_from_member_key(record: ConsumerRecord[Any, Any]) -> str | None:
    """The environment of a record keyed ``environment:org id:user id``; None when the key
    names none (then the envelope, once parsed, says)."""
    key = record.key
    if not isinstance(key, bytes):
        return None
    environment = key.partition(b":")[0].decode("ascii", "replace")
    return environment if environment in ENVIRONMENTS else None


async def raw_records(message: Any) -> Any:
    """A batch subscriber's decoder that decodes nothing: the consumer parses each
    record once, into its contract, rather than FastStream first decoding each as JSON."""
    return message.body


def consume_in_batches(
    broker: KafkaBroker,
    models: Mapping[str, type[E]],
    *,
    group_id: str,
    description: str,
    handler: Handler[E],
    pool: Callable[[], asyncpg.Pool],
    environments: Sequence[str | None] | None = None,
    environment_of: EnvironmentOf | None = None,
    on_quarantine: OnQuarantine[E] | None = None,
    on_quarantined: Callable[[str], None] | None = None,
    max_records: int = BATCH_MAX_RECORDS,
    active_fetch_wait_ms: int = IDLE_FETCH_WAIT_MS,
    **options: Any,
) -> list[Consumer[E]]:
    """Subscribe ``handler(events)`` to batches of ``models``' topics, failures isolated.

    The handler applies the events it is given in one transaction of its own and
    must be idempotent (the inbox): after a failure, part of a batch is applied
    again. A batch's offsets are committed once every record of it was applied
    or quarantined. With ``environments``, one consumer group per environment
    (``<group_id>.<environment>``); without, one group for every environment.
    """
    consumers = [
        Consumer(
            group_id=environment_group(group_id, environment),
            models=models,
            handler=handler,
            pool=pool,
            environment=environment,
            environment_of=environment_of,
            on_quarantine=on_quarantine,
            on_quarantined=on_quarantined,
            active_fetch_wait_ms=active_fetch_wait_ms,
        )
        for environment in (environments or (None,))
    ]
    for consumer in consumers:
        _subscribe(broker, consumer, list(models), description, max_records, options)
    return consumers


def _subscribe(
    broker: KafkaBroker,
    consumer: Consumer[Any],
    topics: list[str],
    description: str,
    max_records: int,
    options: dict[str, Any],
) -> None:
    @broker.subscriber(  # type: ignore[untyped-decorator]
        *topics,
        group_id=consumer.group_id,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=BATCH_TIMEOUT_MS,
        decoder=raw_records,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=IDLE_FETCH_WAIT_MS,
        title=consumer.group_id,
        description=description,
        **options,
    )
    async def consume(_: list[Any], message: KafkaMessage) -> None:
        consumer.fetch_wait.records_arrived(message.consumer, len(message.raw_message))
        await consumer.process(message.raw_message)
