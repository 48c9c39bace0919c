"""Background work of the gateway: forgetting requestIds past their retention, and
making sure no request stays pending without bound."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Gauge

from infra.logging import get_logger
from services.trigger import service

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
        purged = await service.purge_expired_requests(
            self._pool_of(), retention_days=self._retention_days
        )
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
        redriven = await service.redrive_pending_requests(
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

    async def read_overdue(self) -> service.Overdue:
        overdue = await service.overdue_requests(
            self._pool_of(), pending_for_seconds=self._report_after
        )
        self._overdue.set(overdue.count)
        age = (datetime.now(UTC) - overdue.oldest).total_seconds() if overdue.oldest else 0.0
        self._oldest_age.set(age)
        return overdue
