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

The inbox's purges, which must wait until no redelivery of an event is possible,
are built in :mod:`infra.inbox_retention` (decision 0022).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import asyncpg

from infra.logging import get_logger
from infra.periodic import Periodic

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
#: Each table of the service's schema: estimated rows (as of the last ANALYZE or
#: autovacuum, -1 when never analysed) and bytes on disk with its indexes and TOAST.
TABLE_SIZES = """
SELECT c.relname AS name, c.reltuples::bigint AS rows, pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""


class RetentionMetrics(Protocol):
    """What the purges report to (:class:`infra.metrics.ServiceMetrics`; not imported
    here, as it brings Kafka's client to the services' logic that uses purges)."""

    def count_purged(self, purge: str, rows: int) -> None: ...

    def set_table_sizes(self, sizes: dict[str, tuple[int, int]] | None) -> None: ...


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
        metrics: RetentionMetrics | None = None,
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


# --- table sizes ----------------------------------------------------------------------


class TableSizes:
    """Reads the service's table sizes for ``/metrics``, at most every ``max_age`` seconds
    (``pg_class`` and the relation sizes are cheap, but not free on every scrape)."""

    def __init__(
        self,
        pool_of: Callable[[], asyncpg.Pool],
        metrics: RetentionMetrics,
        *,
        max_age: float = 10.0,
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
