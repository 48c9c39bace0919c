"""Concurrent calls coalesced into batches: nobody waits for a batch to fill, nobody
gets another caller's outcome."""

from __future__ import annotations

import asyncio

import pytest

from infra.batching import Coalescer


async def let_tasks_run() -> None:
    """Let every ready task run until it waits (submitted calls, started batches)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Doubler:
    """A batch function that doubles numbers, refuses negatives, and can be held open
    (``held``: every batch waits until ``release`` is set)."""

    def __init__(self, *, held: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        if not held:
            self.release.set()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        return [ValueError(f"{n} is negative") if n < 0 else n * 2 for n in items]


async def test_a_lone_call_runs_at_once_in_a_batch_of_its_own() -> None:
    doubler = Doubler()
    coalescer = Coalescer(doubler, max_batch=10, max_in_flight=1)

    assert await asyncio.wait_for(coalescer.submit(21), timeout=1) == 42
    assert doubler.batches == [[21]]


async def test_calls_arriving_while_every_slot_is_busy_go_together_in_order() -> None:
    doubler = Doubler(held=True)
    coalescer = Coalescer(doubler, max_batch=10, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit(1))
    await let_tasks_run()
    waiting = [asyncio.create_task(coalescer.submit(n)) for n in (2, 3, 4)]
    await let_tasks_run()

    doubler.release.set()

    assert await first == 2
    assert [await task for task in waiting] == [4, 6, 8]
    assert doubler.batches == [[1], [2, 3, 4]]


async def test_a_batch_never_exceeds_its_maximum() -> None:
    doubler = Doubler(held=True)
    coalescer = Coalescer(doubler, max_batch=2, max_in_flight=1)
    tasks = [asyncio.create_task(coalescer.submit(n)) for n in range(5)]
    await let_tasks_run()

    doubler.release.set()

    assert await asyncio.gather(*tasks) == [0, 2, 4, 6, 8]
    assert doubler.batches == [[0], [1, 2], [3, 4]]


async def test_several_batches_run_at_once_up_to_the_limit() -> None:
    doubler = Doubler(held=True)
    coalescer = Coalescer(doubler, max_batch=10, max_in_flight=2)
    tasks = [asyncio.create_task(coalescer.submit(n)) for n in range(4)]
    await let_tasks_run()

    assert doubler.batches == [[0], [1]]  # two slots: the rest wait for one to free
    doubler.release.set()
    assert await asyncio.gather(*tasks) == [0, 2, 4, 6]
    assert doubler.batches == [[0], [1], [2, 3]]


async def test_an_item_refused_by_the_batch_fails_only_its_own_caller() -> None:
    doubler = Doubler(held=True)
    coalescer = Coalescer(doubler, max_batch=10, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit(0))
    await let_tasks_run()
    good = asyncio.create_task(coalescer.submit(5))
    bad = asyncio.create_task(coalescer.submit(-1))
    await let_tasks_run()

    doubler.release.set()

    assert (await first, await good) == (0, 10)
    with pytest.raises(ValueError, match="-1 is negative"):
        await bad
    assert doubler.batches == [[0], [5, -1]]


async def test_a_failing_batch_fails_every_caller_in_it_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database unavailable")
        return list(items)

    coalescer = Coalescer(flaky, max_batch=10, max_in_flight=1)
    with pytest.raises(ConnectionError, match="database unavailable"):
        await coalescer.submit(1)

    assert await coalescer.submit(2) == 2


class Poisoned:
    """A batch function whose whole batch fails when any item is 13 (as one value the
    database refuses fails a whole statement), or fails alike for all when ``away``."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.away = False

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        if self.away:
            raise ConnectionError("database unavailable")
        if 13 in items:
            raise ValueError("13 cannot be stored")
        return list(items)


async def submit_together(coalescer: Coalescer[int, int], items: list[int]) -> list[object]:
    """Submit ``items`` so that all but the first share one batch; each one's outcome."""
    tasks = [asyncio.create_task(coalescer.submit(n)) for n in items]
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_a_batch_one_item_fails_is_retried_one_by_one_and_only_that_item_fails() -> None:
    poisoned = Poisoned()
    coalescer = Coalescer(poisoned, max_batch=10, max_in_flight=1, shared=lambda e: False)

    outcomes = await submit_together(coalescer, [1, 2, 13, 4])

    assert outcomes[:2] + outcomes[3:] == [1, 2, 4]
    assert isinstance(outcomes[2], ValueError)
    assert poisoned.batches == [[1], [2, 13, 4], [2], [13], [4]]


async def test_an_error_shared_by_every_item_fails_the_batch_at_once_without_retries() -> None:
    poisoned = Poisoned()
    poisoned.away = True
    shared = Coalescer(
        poisoned, max_batch=10, max_in_flight=1, shared=lambda e: isinstance(e, ConnectionError)
    )

    outcomes = await submit_together(shared, [1, 2, 3])

    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert poisoned.batches == [[1], [2, 3]]


async def test_a_batch_returning_the_wrong_number_of_outcomes_fails_its_callers() -> None:
    async def lossy(items: list[int]) -> list[int | BaseException]:
        return items[:-1]

    coalescer = Coalescer(lossy, max_batch=10, max_in_flight=1)

    with pytest.raises(RuntimeError, match="1 items came back with 0 outcomes"):
        await coalescer.submit(1)


async def test_a_cancelled_caller_does_not_disturb_the_others_in_its_batch() -> None:
    doubler = Doubler(held=True)
    coalescer = Coalescer(doubler, max_batch=10, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit(1))
    await let_tasks_run()
    gone = asyncio.create_task(coalescer.submit(2))
    stays = asyncio.create_task(coalescer.submit(3))
    await let_tasks_run()
    gone.cancel()

    doubler.release.set()

    assert (await first, await stays) == (2, 6)
    assert gone.cancelled()
