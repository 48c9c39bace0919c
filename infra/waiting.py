"""Waiting for an event with a deadline, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns normally when the awaited thing
completes in the same loop turn as the task is cancelled: the cancellation is
lost. A worker that loops ``wait_for(wake.wait(), poll)`` and is woken and
stopped at once then runs for ever, and the stop that cancelled it never
returns (the notifier's delivery workers and the outbox relay did exactly
that). ``asyncio.timeout`` keeps an outside cancellation apart from its own,
so everything here is built on it; ruff bans ``asyncio.wait_for`` in the
project.
"""

from __future__ import annotations

import asyncio


async def wait_at_most(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` was set within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
