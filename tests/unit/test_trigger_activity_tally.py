"""The gateway's activity counts in memory and their flush (services.trigger.activity)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.trigger.activity import ACCEPTED, NO_RULE, ActivityFlusher, ActivityTally

AT = datetime(2026, 12, 8, 9, 41, 17, tzinfo=UTC)
QUARTER = datetime(2026, 12, 8, 9, 30, tzinfo=UTC)


class FakePool:
    """Records the statements a flush runs; refuses them while ``down``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.down = False

    async def execute(self, statement: str, *args: Any) -> None:
        if self.down:
            raise OSError("database away")
        self.calls.append(args)


def flushed_rows(pool: FakePool) -> list[tuple[Any, ...]]:
    return [row for args in pool.calls for row in zip(*args, strict=True)]


class TestActivityTally:
    def test_counts_answers_per_rule_outcome_and_quarter_hour(self) -> None:
        tally = ActivityTally(clock=lambda: AT)
        for outcome in (ACCEPTED, ACCEPTED, "CAP_EXCEEDED"):
            tally.count("org-1", "staging", "rule-1", outcome)

        assert tally.take() == {
            ("org-1", "staging", "rule-1", QUARTER, ACCEPTED): 2,
            ("org-1", "staging", "rule-1", QUARTER, "CAP_EXCEEDED"): 1,
        }

    def test_counts_a_refusal_without_a_known_rule_for_the_organisation_only(self) -> None:
        tally = ActivityTally(clock=lambda: AT)
        tally.count("org-1", "staging", None, "RULE_NOT_FOUND")

        assert list(tally.take()) == [("org-1", "staging", NO_RULE, QUARTER, "RULE_NOT_FOUND")]


class TestActivityFlusher:
    async def test_writes_the_counts_sorted_and_starts_afresh(self) -> None:
        tally, pool = ActivityTally(clock=lambda: AT), FakePool()
        tally.count("org-2", "staging", "rule-1", ACCEPTED)
        tally.count("org-1", "staging", "rule-1", ACCEPTED)
        flusher = ActivityFlusher(tally, lambda: pool, interval=5)

        assert await flusher.flush() == 2
        assert [row[0] for row in flushed_rows(pool)] == ["org-1", "org-2"]
        assert await flusher.flush() == 0

    async def test_keeps_the_counts_a_flush_could_not_write_for_the_next(self) -> None:
        tally, pool = ActivityTally(clock=lambda: AT), FakePool()
        tally.count("org-1", "staging", "rule-1", ACCEPTED)
        flusher = ActivityFlusher(tally, lambda: pool, interval=5)
        pool.down = True
        with pytest.raises(OSError):
            await flusher.flush()
        tally.count("org-1", "staging", "rule-1", ACCEPTED)
        pool.down = False

        await flusher.flush()

        assert flushed_rows(pool) == [("org-1", "staging", "rule-1", QUARTER, ACCEPTED, 2)]

    async def test_writes_what_is_left_when_the_gateway_stops(self) -> None:
        tally, pool = ActivityTally(clock=lambda: AT), FakePool()
        flusher = ActivityFlusher(tally, lambda: pool, interval=300)
        await flusher.start()
        tally.count("org-1", "staging", "rule-1", ACCEPTED)

        await flusher.stop()

        assert flushed_rows(pool) == [("org-1", "staging", "rule-1", QUARTER, ACCEPTED, 1)]
