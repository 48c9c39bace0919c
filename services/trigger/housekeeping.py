"""Background work of the gateway: forgetting requestIds past their retention, and
making sure no request stays pending without bound."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Gauge

from contracts import PointsRequested, PointsRequestedEvent
from infra import outbox
from infra.logging import get_logger
from services.trigger import repository

log = get_logger(__name__)


class Periodic:
    """Runs :meth:`once` at start and then every ``interval`` seconds until stopped.

    Every replica runs one of each; the statements skip rows another replica
    holds, so running them on several at once costs nothing but a few empty
    queries. A round that fails on the database is logged and retried next time.
    """

    name = "periodic"

    def __init__(self, pool_of: Callable[[], asyncpg.Pool], *, interval: float) -> None:
        self._pool_of = pool_of
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def once(self) -> int:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"trigger-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning(f"{self.name}_failed", error=str(error) or type(error).__name__)
            await asyncio.sleep(self._interval)


class RequestPurger(Periodic):
    """Purges expired idempotency records; expired rows only cost disk until it runs."""

    name = "requests.purge"

    def __init__(
        self, pool_of: Callable[[], asyncpg.Pool], *, retention_days: int, interval: float
    ) -> None:
        super().__init__(pool_of, interval=interval)
        self._retention_days = retention_days

    async def once(self) -> int:
        purged = await purge_expired_requests(self._pool_of(), retention_days=self._retention_days)
        if purged:
            log.info("requests.purged", purged=purged, retention_days=self._retention_days)
        return purged


class PendingReconciler(Periodic):
    """Publishes again the requests pending longer than ``redrive_after`` seconds, and
    reports those pending longer than ``report_after``: a warning in the log and the
    gauges ``points_trigger_requests_overdue`` and
    ``points_trigger_oldest_pending_request_age_seconds``, read each round.
    """

    name = "requests.reconcile"

    def __init__(
        self,
        pool_of: Callable[[], asyncpg.Pool],
        *,
        redrive_after: float,
        report_after: float,
        interval: float,
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(pool_of, interval=interval)
        self._redrive_after = redrive_after
        self._report_after = report_after
        self._overdue = Gauge(
            "points_trigger_requests_overdue",
            f"Requests pending longer than TRIGGER_PENDING_REPORT_AFTER_SECONDS "
            f"({report_after:g} s).",
            registry=registry,
        )
        self._oldest_age = Gauge(
            "points_trigger_oldest_pending_request_age_seconds",
            "How long the oldest of the overdue requests has been pending (0 when none is).",
            registry=registry,
        )

    async def once(self) -> int:
        redriven = await redrive_pending_requests(
            self._pool_of(), pending_for_seconds=self._redrive_after
        )
        if redriven:
            log.warning(
                "requests.redriven", redriven=redriven, pending_for_seconds=self._redrive_after
            )
        overdue = await self.read_overdue()
        if overdue.count:
            log.error(
                "requests.overdue",
                overdue=overdue.count,
                oldest=overdue.oldest.isoformat() if overdue.oldest else None,
                pending_for_seconds=self._report_after,
            )
        return redriven

    async def read_overdue(self) -> Overdue:
        overdue = await overdue_requests(self._pool_of(), pending_for_seconds=self._report_after)
        self._overdue.set(overdue.count)
        age = (datetime.now(UTC) - overdue.oldest).total_seconds() if overdue.oldest else 0.0
        self._oldest_age.set(age)
        return overdue


async def purge_expired_requests(
    pool: asyncpg.Pool, *, retention_days: int, batch_size: int = 1000
) -> int:
    """Forget settled requests older than the retention; how many were purged.

    Each batch commits on its own, so a large backlog never becomes one long
    transaction holding thousands of row locks.
    """
    purged = 0
    while True:
        deleted = await repository.purge_requests(pool, retention_days, batch_size)
        purged += deleted
        if deleted < batch_size:
            return purged


async def redrive_pending_requests(
    pool: asyncpg.Pool, *, pending_for_seconds: float, batch_size: int = 500
) -> int:
    """Publish again the requests pending longer than ``pending_for_seconds``; how many.

    A request stays pending until the ledger's result arrives. When its event or
    its result was lost (a broker that lost its log, a result quarantined), the
    event is published again with a new event id and the same transaction id:
    the ledger applies a transaction it never recorded and publishes again the
    result of one it did, so the request settles either way. Each request is
    published again at growing intervals (see ``REDRIVE_PENDING``), each batch
    in a transaction of its own with its outbox rows.
    """
    redriven = 0
    while True:
        async with pool.acquire() as connection, connection.transaction():
            rows = await repository.redrive_pending(connection, pending_for_seconds, batch_size)
            await outbox.enqueue(connection, *(_requested_again(row) for row in rows))
        redriven += len(rows)
        if len(rows) < batch_size:
            return redriven


def _requested_again(request: asyncpg.Record) -> PointsRequestedEvent:
    """The ``points.requested.v1`` event of a recorded request, with a new event id."""
    return PointsRequestedEvent.new_event(
        data=PointsRequested(
            request_id=request["request_id"],
            transaction_id=request["transaction_id"],
            client_id=request["client_id"],
            rule_id=request["rule_id"],
            rule_version=request["rule_version"],
            user_id=request["user_id"],
            type=request["type"],
            amount=request["amount"],
            callback_url=request["callback_url"],
            requested_at=request["created_at"],
            expires_at=request["expires_at"],
        ),
        environment=request["environment"],
        org_id=request["org_id"],
        # Requests recorded before the gateway kept their correlation id get one
        # that still leads back to the request.
        correlation_id=request["correlation_id"] or f"redrive-{request['transaction_id']}",
    )


@dataclass(frozen=True)
class Overdue:
    """Requests pending longer than the reconciliation's report threshold."""

    count: int
    oldest: datetime | None


async def overdue_requests(pool: asyncpg.Pool, *, pending_for_seconds: float) -> Overdue:
    return Overdue(*await repository.overdue_requests(pool, pending_for_seconds))
