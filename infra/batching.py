"""Coalescing concurrent calls into batches: one database round trip for many requests.

Under load, an HTTP service doing one small transaction per request pays for
each one in full: a statement's parse-bind-execute, a commit, a write and a
read on the socket, a pool checkout. :class:`Coalescer` lets every request
``await coalescer.submit(item)`` while a batch function serves whatever
requests are waiting in one call.

No request waits for a batch to fill. A request that finds a free slot (fewer
than ``max_in_flight`` batches running) starts a batch at once, alone; only
requests arriving while every slot is busy wait, and they all go together in
the next batch. An idle service therefore answers as fast as before, and a
busy one batches exactly as much as its load makes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Serves concurrent :meth:`submit` calls through ``run_batch(items)``, in batches.

    ``run_batch`` gets the items in arrival order and returns one outcome per
    item, in the same order: a result, or an exception for that caller alone.

    If ``run_batch`` itself raises, one item may have spoilt the batch for the
    rest (a value the database refuses fails the whole statement), so each item
    of it is run again alone and gets its own outcome: only the bad one fails.
    An error ``shared`` says belongs to every item alike (the database is away)
    is not retried: every caller in the batch gets it at once.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int,
        max_in_flight: int,
        shared: Callable[[BaseException], bool] = lambda error: False,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("a coalescer needs max_batch >= 1 and max_in_flight >= 1")
        self._run_batch = run_batch
        self._shared = shared
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """The item's outcome, once a batch has served it (its exception is raised)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start_batches()
        return await future

    async def _outcomes(self, items: list[T]) -> Sequence[R | BaseException]:
        outcomes = await self._run_batch(items)
        if len(outcomes) != len(items):
            raise RuntimeError(
                f"a batch of {len(items)} items came back with {len(outcomes)} outcomes"
            )
        return outcomes

    async def _one_by_one(self, items: list[T]) -> list[R | BaseException]:
        """Each item's outcome run alone, after their batch failed: one may have failed
        the others. Once an error every item would share turns up, the rest get it."""
        outcomes: list[R | BaseException] = []
        for item in items:
            try:
                (outcome,) = await self._outcomes([item])
            except Exception as error:
                if self._shared(error):
                    return outcomes + [error] * (len(items) - len(outcomes))
                outcome = error
            outcomes.append(outcome)
        return outcomes

    def _start_batches(self) -> None:
        while self._waiting and self._in_flight < self._max_in_flight:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            self._in_flight += 1
            task = asyncio.create_task(self._serve(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            try:
                outcomes = await self._outcomes(items)
            except Exception as error:
                if len(items) == 1 or self._shared(error):
                    raise
                outcomes = await self._one_by_one(items)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # every caller in the batch gets it
            outcomes = [error] * len(batch)
        finally:
            self._in_flight -= 1
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled (a client hung up)
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._start_batches()
