"""What every service process does around its own code.

A :class:`ServiceRuntime` owns the connections a service needs (the asyncpg
pool, the FastStream broker, the outbox relay and its producer) and the
service's Prometheus metrics, brings them up in order with clear errors, and
tears them down in reverse. :func:`infra.serving.serve` runs it together with
the service's HTTP app under uvicorn (or the app's lifespan does, see
:meth:`ServiceRuntime.lifespan`); :func:`infra.health.health_router` answers
for it on ``/healthz``, ``/readyz`` and ``/metrics``.

The entry points of a service (its HTTP routes, Kafka handlers and start-up
hooks) own the transaction: they open it with :meth:`ServiceRuntime.in_transaction`
(or :meth:`ServiceRuntime.transactional` for a handler) and hand its connection to
the service's logic, which never commits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from infra import db
from infra.broker import start_broker, start_producer, wait_for_broker
from infra.catchup import ConsumerLag
from infra.consumers import Consumer, EnvironmentOf, Handler, OnQuarantine, consume_in_batches
from infra.inbox_retention import InboxRetention
from infra.kafka_admin import ClusterIdentity, create_topics
from infra.kafka_security import kafka_client_options
from infra.logging import get_logger
from infra.metrics import ServiceMetrics
from infra.outbox import OutboxRelay, backlog
from infra.retention import Retention, TableSizes, outbox_purge
from infra.settings import ServiceSettings

log = get_logger(__name__)

INFRA_MIGRATIONS = Path(__file__).parent / "migrations"

ReadinessCheck = Callable[[], Awaitable[bool]]
READINESS_CHECK_SECONDS = 3.0
_READY_POLL_SECONDS = 0.5
E = TypeVar("E", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")


class ServiceRuntime:
    """The infrastructure of one service process."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        schema: str,
        migrations: Path,
        broker: KafkaBroker | None = None,
        relay: bool = True,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.migrations = migrations
        self.broker = broker
        self._with_relay = relay
        self._pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        self.readiness_checks: dict[str, ReadinessCheck] = {
            "database": self._database_ready,
            "broker": self._broker_ready,
        }
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._broker_task: asyncio.Task[None] | None = None
        self._said_ready = False
        self._running = False
        self.metrics = ServiceMetrics(settings.service_name)
        self._consumer_lag = ConsumerLag(settings)
        if relay:
            self.metrics.start_counting_published()
            self.metrics.before_scrape(self._read_outbox_backlog)
        #: The service's purges (infra/retention.py): the outbox's and the inbox's are
        #: added at start; a service adds its own tables' with ``retention.add``.
        self.retention = Retention(
            lambda: self.pool,
            interval=settings.retention_interval_seconds,
            batch_size=settings.retention_batch_size,
            metrics=self.metrics,
        )
        self._inbox_retention = InboxRetention(settings)
        self.metrics.before_scrape(TableSizes(lambda: self.pool, self.metrics).read)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the service runtime has not started")
        return self._pool

    async def in_transaction(
        self,
        work: Callable[Concatenate[asyncpg.Connection, P], Awaitable[R]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """``work(connection, *args, **kwargs)`` in one transaction on a pooled connection:
        committed when it returns (then the relay is woken), rolled back when it raises."""
        async with self.pool.acquire() as connection, connection.transaction():
            result = await work(connection, *args, **kwargs)
        self.outbox_committed()
        return result

    def outbox_committed(self) -> None:
        """A transaction of this process that may have written outbox rows committed: the
        relay publishes them now rather than at its next poll (a wake with nothing to
        publish costs it one query)."""
        if self.relay is not None:
            self.relay.wake()

    def transactional(
        self, work: Callable[[asyncpg.Connection, list[E]], Awaitable[object]]
    ) -> Handler[E]:
        """A Kafka handler for :meth:`consume` that applies each batch with
        ``work(connection, events)`` in a transaction of its own."""

        async def handle(events: list[E]) -> None:
            await self.in_transaction(work, events)

        return handle

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """Start the runtime for an ASGI server's lifespan and stop it after, for a server
        that runs the app's lifespan (``uvicorn --factory``); :func:`infra.serving.serve`
        and tests start the runtime themselves and run no lifespan."""
        try:
            await self.start()
            yield
        finally:
            await self.stop()

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` after the database and broker are up."""
        self._on_start.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(hook)

    def watch_lag(self, group_id: str, topics: Sequence[str]) -> None:
        """Report ``points_consumer_lag`` of this consumer group on ``topics``."""
        if not self._consumer_lag.groups:
            self.metrics.before_scrape(self._read_consumer_lag)
        self._consumer_lag.watch(group_id, topics)

    def consume(
        self,
        models: Mapping[str, type[E]],
        *,
        group_id: str,
        description: str,
        handler: Handler[E],
        by_environment: bool = True,
        environment_of: EnvironmentOf | None = None,
        on_quarantine: OnQuarantine[E] | None = None,
        **options: Any,
    ) -> list[Consumer[E]]:
        """Subscribe ``handler`` to batches of ``models``' topics with failures isolated
        (:func:`infra.consumers.consume_in_batches`), its lag and quarantine counted.

        ``by_environment`` gives each environment of ``settings.environments`` a
        consumer group of its own (``<group_id>.<environment>``); without it, one
        group sees every environment (for what both share, such as API clients).
        """
        if self.broker is None:
            raise RuntimeError("this runtime has no broker to consume with")
        consumers = consume_in_batches(
            self.broker,
            models,
            group_id=group_id,
            description=description,
            handler=handler,
            pool=lambda: self.pool,
            environments=self.settings.environments if by_environment else None,
            environment_of=environment_of,
            on_quarantine=on_quarantine,
            on_quarantined=self.metrics.count_quarantined,
            active_fetch_wait_ms=self.settings.kafka_active_fetch_wait_ms,
            **{
                "session_timeout_ms": self.settings.kafka_session_timeout_ms,
                "heartbeat_interval_ms": self.settings.kafka_heartbeat_interval_ms,
                **options,
            },
        )
        for topic in models:
            self.metrics.start_counting_quarantined(topic)
        for consumer in consumers:
            self.watch_lag(consumer.group_id, list(models))
            self._inbox_retention.consumed(consumer.group_id, models)
        return consumers

    async def start(self) -> None:
        if self._running:
            # Serving runs the app's lifespan or starts the runtime, never both.
            raise RuntimeError("the service runtime is running already")
        self._running = True
        self._said_ready = False
        settings = self.settings
        await db.migrate_with_retry(
            settings.database_url,
            self.schema,
            [INFRA_MIGRATIONS, self.migrations],
            timeout=settings.startup_timeout_seconds,
        )
        self._pool = await db.create_pool(
            settings.database_url,
            self.schema,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
        )
        if self._with_relay or self.broker is not None:
            await wait_for_broker(settings)
        if self._with_relay:
            self._producer = await start_producer(settings)
            self.relay = OutboxRelay(
                settings.database_url,
                self.schema,
                self._producer,
                on_published=self.metrics.count_published,
                cluster=ClusterIdentity(
                    settings.kafka_bootstrap_servers, **kafka_client_options(settings)
                ),
                on_new_cluster=self._prepare_new_cluster,
                retention=timedelta(hours=settings.outbox_retention_hours),
            )
            self.relay.start()
        if self.broker is not None:
            # Joining consumer groups can take a rebalance or two (seconds);
            # HTTP comes up meanwhile and /readyz says when the consumers run.
            self._broker_task = asyncio.create_task(self._start_broker(self.broker))
        for hook in self._on_start:
            await hook()
        await self._start_retention()
        log.info("service.started", port=settings.port)

    async def _start_retention(self) -> None:
        outbox = timedelta(hours=self.settings.outbox_retention_hours)
        self.retention.infrastructure = [
            *([outbox_purge(outbox)] if self._with_relay else []),
            *await self._inbox_retention.purges(),
        ]
        if self.retention.infrastructure or self.retention.purges:
            await self.retention.start()

    async def readiness(self) -> dict[str, bool]:
        """Each readiness check's answer (what ``/readyz`` reports); a check that fails or
        takes longer than :data:`READINESS_CHECK_SECONDS` is not ready.

        The first time every check passes after start-up, ``service.ready`` is logged, so
        the log says when the process began its work (consumers joined, projections
        caught up), and says it before any ``/readyz`` answers 200.
        """
        results: dict[str, bool] = {}
        for name, check in self.readiness_checks.items():
            try:
                async with asyncio.timeout(READINESS_CHECK_SECONDS):
                    results[name] = await check()
            except Exception:
                results[name] = False
        if all(results.values()) and not self._said_ready:
            self._said_ready = True
            log.info("service.ready", port=self.settings.port)
        return results

    async def log_when_ready(self) -> None:
        """Ask the readiness checks until they all pass, so a process that nobody polls
        logs ``service.ready`` too (see :meth:`readiness`)."""
        while not all((await self.readiness()).values()):  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(_READY_POLL_SECONDS)

    async def _start_broker(self, broker: KafkaBroker) -> None:
        try:
            await start_broker(broker)
        except Exception as error:
            log.error("broker.start_failed", error=str(error) or type(error).__name__)
            raise

    async def _prepare_new_cluster(self) -> None:
        """Create the platform's topics on a cluster the relay meets for the first time, in
        development, where that cluster is the embedded broker started again; elsewhere
        topics are an operator's (``points topics create``), with their replication."""
        if self.settings.mode != "development":
            return
        await create_topics(
            self.settings.kafka_bootstrap_servers,
            self.settings.topics(),
            **kafka_client_options(self.settings),
        )

    async def stop(self) -> None:
        """Stop in the order that loses nothing: the consumers finish the batch they hold
        (FastStream waits ``shutdown_grace_seconds`` for it), then the relay publishes what
        is pending, for as long again, then the connections close."""
        await self.retention.stop()
        for hook in reversed(self._on_stop):
            await hook()
        if self._broker_task is not None:
            self._broker_task.cancel()
            with contextlib.suppress(BaseException):
                await self._broker_task
        if self.broker is not None:
            await self.broker.stop()
        if self.relay is not None:
            await self.relay.stop(drain_seconds=self.settings.shutdown_grace_seconds)
        if self._producer is not None:
            await self._producer.stop()
        if self._pool is not None:
            await self._pool.close()
        self._running = False
        log.info("service.stopped")

    async def _database_ready(self) -> bool:
        await self.pool.fetchval("SELECT 1")
        return True

    async def _broker_ready(self) -> bool:
        task = self._broker_task
        if task is not None and (not task.done() or task.exception() is not None):
            return False
        if self.broker is not None:
            return bool(await self.broker.ping(timeout=2.0))
        return self._producer is not None

    async def _read_outbox_backlog(self) -> None:
        try:
            async with asyncio.timeout(2.0):
                rows: int | None = await backlog(self.pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.warning("metrics.outbox_backlog_unavailable", error=str(error))
            rows = None
        except RuntimeError:  # not started: nothing to report yet
            rows = None
        self.metrics.set_outbox_backlog(rows)

    async def _read_consumer_lag(self) -> None:
        self.metrics.set_consumer_lag(await self._consumer_lag.read())
