"""Background work a service repeats: once at start, then every ``interval`` seconds.

The one pattern every service uses for its periodic passes (the gateway's
reconciliation, the ledger's expiry, every service's retention purges): each
replica runs one of each, and the statements they run skip rows another replica
holds (``FOR UPDATE SKIP LOCKED``), so several replicas at once share the work
and cost each other nothing but a few empty queries.
"""

from __future__ import annotations

import asyncio
import contextlib

from infra.errors import is_transient
from infra.logging import get_logger
from infra.waiting import wait_at_most

log = get_logger(__name__)


class Periodic:
    """Runs :meth:`once` at start and then every ``interval`` seconds until stopped.

    A round that fails is logged (a warning when the database or broker was
    away, an error otherwise) and the next round tries again: every pass must
    leave nothing half done when it fails.
    """

    name = "periodic"

    def __init__(self, *, interval: float) -> None:
        self._interval = interval
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def once(self) -> int:
        """One round; how many things it did (rows purged, lots expired, ...)."""
        raise NotImplementedError

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.once()
            except Exception as error:
                report = log.warning if is_transient(error) else log.error
                report(f"{self.name}.failed", error=str(error) or type(error).__name__)
            await wait_at_most(self._stopping, self._interval)
