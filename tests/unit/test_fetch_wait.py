"""A consumer's fetch wait follows its traffic: short while records trickle, long while
they flood in or once they stop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from infra.consumers import (
    FLOOD_BATCH,
    FLOOD_RATE,
    IDLE_FETCH_WAIT_MS,
    RATE_WINDOW_SECONDS,
    TRICKLE_BATCH,
    FetchWait,
)


def consumer() -> SimpleNamespace:
    """What FetchWait touches of an aiokafka consumer: its fetcher's wait."""
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=IDLE_FETCH_WAIT_MS))


async def test_trickling_records_get_the_short_wait_and_a_flood_the_long_one() -> None:
    wait, kafka = FetchWait(50), consumer()
    seen = []
    for count in (1, FLOOD_BATCH, TRICKLE_BATCH, TRICKLE_BATCH - 1):
        if count == TRICKLE_BATCH:
            await asyncio.sleep(RATE_WINDOW_SECONDS + 0.05)  # the rate alone is no flood now
        wait.records_arrived(kafka, count)
        seen.append(wait.current_ms)

    # A flood keeps the long wait until a batch is small again.
    assert seen == [50, IDLE_FETCH_WAIT_MS, IDLE_FETCH_WAIT_MS, 50]


async def test_many_small_batches_a_second_count_as_a_flood_until_the_rate_drops() -> None:
    wait, kafka = FetchWait(50), consumer()
    seen = []
    for _ in range(int(FLOOD_RATE) // 2):
        wait.records_arrived(kafka, 2)  # small batches, but FLOOD_RATE records within a second
        seen.append(wait.current_ms)
    await asyncio.sleep(RATE_WINDOW_SECONDS + 0.05)
    wait.records_arrived(kafka, 1)

    assert seen[0] == 50
    assert seen[-1] == IDLE_FETCH_WAIT_MS
    assert wait.current_ms == 50


async def test_a_consumer_whose_records_stopped_goes_back_to_the_long_wait() -> None:
    wait, kafka = FetchWait(50, active_seconds=0.3), consumer()
    wait.records_arrived(kafka, 1)
    await asyncio.sleep(0.2)
    wait.records_arrived(kafka, 1)  # still busy: the wait stays short past the first 0.3 s
    await asyncio.sleep(0.2)
    busy = wait.current_ms
    await asyncio.sleep(0.6)

    assert (busy, wait.current_ms) == (50, IDLE_FETCH_WAIT_MS)


async def test_a_short_wait_no_shorter_than_the_long_one_changes_nothing() -> None:
    wait, kafka = FetchWait(IDLE_FETCH_WAIT_MS), consumer()
    wait.records_arrived(kafka, 1)

    assert wait.current_ms is None
    assert kafka._fetcher._fetch_max_wait_ms == IDLE_FETCH_WAIT_MS
