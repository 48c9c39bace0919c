"""A worker that waits with a deadline stops when it is cancelled, even when it is
woken in the same instant (``asyncio.wait_for`` on Python 3.11 lost that cancel)."""

from __future__ import annotations

import asyncio

from infra.waiting import wait_at_most


async def test_tells_a_set_event_from_a_deadline_that_passed() -> None:
    event = asyncio.Event()
    assert await wait_at_most(event, 0.01) is False
    event.set()
    assert await wait_at_most(event, 0.01) is True


async def test_a_worker_woken_and_cancelled_at_once_stops() -> None:
    wake = asyncio.Event()

    async def worker() -> None:
        while True:
            await wait_at_most(wake, 0.05)
            wake.clear()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.01)  # the worker is waiting
    wake.set()
    task.cancel()

    async with asyncio.timeout(2):
        results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
