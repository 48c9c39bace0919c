"""Background work of the gateway: forgetting requestIds past their retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg

from infra.logging import get_logger
from services.trigger import service

log = get_logger(__name__)


class RequestPurger:
    """Purges expired idempotency records at start and then every ``interval`` seconds.

    Every replica runs one; the purge skips rows another replica is deleting,
    so running it on several at once costs nothing but a few empty queries.
    """

    def __init__(
        self, pool_of: Callable[[], asyncpg.Pool], *, retention_days: int, interval: float
    ) -> None:
        self._pool_of = pool_of
        self._retention_days = retention_days
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trigger-request-purger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def purge_once(self) -> int:
        purged = await service.purge_expired_requests(
            self._pool_of(), retention_days=self._retention_days
        )
        if purged:
            log.info("requests.purged", purged=purged, retention_days=self._retention_days)
        return purged

    async def _run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                # The next round retries; expired rows only cost disk meanwhile.
                log.warning("requests.purge_failed", error=str(error) or type(error).__name__)
            await asyncio.sleep(self._interval)
