"""Background work of the gateway: forgetting requestIds past their retention (a purge
of :mod:`infra.retention`), and making sure no request stays pending without bound."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Gauge

from contracts import PointsRequested, PointsRequestedEvent
from infra import outbox
from infra.logging import get_logger
from infra.periodic import Periodic
from infra.retention import Purge, purge_in_batches
from services.trigger import repository

log = get_logger(__name__)


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
        super().__init__(interval=interval)
        self._pool_of = pool_of
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


def requests_purge(retention_days: float) -> Purge:
    """Forget settled requests older than the retention (pending ones stay)."""
    return Purge("requests", repository.PURGE_REQUESTS, (retention_days,))


async def purge_expired_requests(
    pool: asyncpg.Pool, *, retention_days: float, batch_size: int = 1000
) -> int:
    """Run :func:`requests_purge` to the end now; how many requests were purged."""
    return await purge_in_batches(
        pool, repository.PURGE_REQUESTS, retention_days, batch_size=batch_size
    )


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
