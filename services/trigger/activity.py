"""What the gateway answered over time: triggers accepted, and refused by code.

Refusals are not recorded anywhere else, and a hostile client can send thousands
a second, so nothing is written per request: :class:`ActivityTally` counts in
memory per (organisation, environment, rule, outcome, 15-minute bucket) and
:class:`ActivityFlusher` adds the counts to the ``activity`` table every
``TRIGGER_ACTIVITY_FLUSH_SECONDS`` and once more when the gateway stops. A gateway
that crashes loses at most the counts of one flush interval; a flush the database
refuses keeps its counts for the next one.

A refusal is counted under its rule only when the rule is one of the caller's
organisation that the gateway knows; any other (an unknown rule id, or a request
refused before its rule was read) counts for the organisation alone, with no rule
id stored, so made-up ids cannot grow the table.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from infra.activity import ActivityWindow, bucket_of
from infra.logging import get_logger
from services.trigger import activity_repository

log = get_logger(__name__)

#: The outcome of a trigger answered 202 (any other outcome is a refusal's code).
ACCEPTED = "ACCEPTED"
#: The rule column of counts that belong to no rule.
NO_RULE = ""

Key = tuple[str, str, str, datetime, str]


class ActivityTally:
    """Counts of the gateway's answers since the last flush, in memory."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._counts: Counter[Key] = Counter()

    def count(self, org_id: str, environment: str, rule_id: str | None, outcome: str) -> None:
        """One answer: ``ACCEPTED`` or a refusal's code, under ``rule_id`` (None: none)."""
        bucket = bucket_of(self._clock())
        self._counts[(org_id, environment, rule_id or NO_RULE, bucket, outcome)] += 1

    def take(self) -> Counter[Key]:
        """The counts so far; the tally starts afresh."""
        counts, self._counts = self._counts, Counter()
        return counts

    def give_back(self, counts: Counter[Key]) -> None:
        """Counts a flush could not write, to be written with the next."""
        self._counts.update(counts)


class ActivityFlusher:
    """Adds the tally's counts to the database every ``interval`` seconds and at stop."""

    def __init__(
        self, tally: ActivityTally, pool_of: Callable[[], asyncpg.Pool], *, interval: float
    ) -> None:
        self._tally = tally
        self._pool_of = pool_of
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def flush(self) -> int:
        """Write what was counted; how many rows were added to."""
        counts = self._tally.take()
        if not counts:
            return 0
        rows = [(*key, requests) for key, requests in sorted(counts.items())]
        try:
            await activity_repository.add_activity(self._pool_of(), rows)
        except BaseException:
            self._tally.give_back(counts)
            raise
        return len(rows)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trigger-activity-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("activity.flush_failed", error=str(error) or type(error).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("activity.flush_failed", error=str(error) or type(error).__name__)


@dataclass(frozen=True)
class AnswersBucket:
    """What the gateway answered in one hour or day."""

    start: datetime
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    """Refusals by code."""


async def rule_activity(
    pool: asyncpg.Pool, org_id: str, environment: str, rule_id: str, window: ActivityWindow
) -> list[AnswersBucket]:
    """The rule's triggers accepted and refused in each bucket of ``window``."""
    rows = await activity_repository.rule_activity(
        pool, org_id, environment, rule_id, window.starts, window.end
    )
    return _buckets(rows, window)


async def organisation_activity(
    pool: asyncpg.Pool, org_id: str, environment: str, window: ActivityWindow
) -> list[AnswersBucket]:
    """Every trigger of the organisation in the environment, rule or none, per bucket."""
    rows = await activity_repository.organisation_activity(
        pool, org_id, environment, window.starts, window.end
    )
    return _buckets(rows, window)


def _buckets(rows: Iterable[asyncpg.Record], window: ActivityWindow) -> list[AnswersBucket]:
    buckets = [AnswersBucket(start) for start in window.starts]
    for row in rows:
        index = window.index_of(row["slot"])
        if row["outcome"] == ACCEPTED:
            buckets[index] = AnswersBucket(
                buckets[index].start, int(row["requests"]), buckets[index].refused
            )
        else:
            buckets[index].refused[row["outcome"]] = int(row["requests"])
    return buckets
