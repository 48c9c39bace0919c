"""The inbox: exactly-once effects from at-least-once delivery.

A consumer calls :func:`claim` inside the transaction that applies the
event's effect. The first delivery inserts the event id and goes on; any
redelivery finds the id already there and skips the effect. Because the
insert and the effect commit or roll back together, a crash between them
leaves neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar
from uuid import UUID

import asyncpg

CLAIM = """
INSERT INTO inbox (event_id, topic) VALUES ($1, $2)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
# Rows go in event id order, so two transactions claiming overlapping sets wait
# on each other instead of deadlocking.
CLAIM_ALL = """
INSERT INTO inbox (event_id, topic)
SELECT event_id, $2 FROM unnest($1::uuid[]) AS claimed (event_id) ORDER BY event_id
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


async def claim(connection: asyncpg.Connection, event_id: UUID, topic: str) -> bool:
    """Record ``event_id`` as processed; False when it already was."""
    assert connection.is_in_transaction(), "claim must run in the effect's transaction"
    return await connection.fetchval(CLAIM, event_id, topic) is not None


async def claim_all(
    connection: asyncpg.Connection, event_ids: Iterable[UUID], topic: str
) -> set[UUID]:
    """:func:`claim` for many events in one round trip; the ids claimed now."""
    assert connection.is_in_transaction(), "claim_all must run in the effects' transaction"
    ids = sorted(set(event_ids))
    if not ids:
        return set()
    rows = await connection.fetch(CLAIM_ALL, ids, topic)
    return {row["event_id"] for row in rows}


class Event(Protocol):
    @property
    def event_id(self) -> UUID: ...


E = TypeVar("E", bound=Event)


async def claim_new(connection: asyncpg.Connection, events: Sequence[E], topic: str) -> list[E]:
    """The events of a batch not processed before, each once, in delivery order.

    Claimed in event id order (two batches carrying the same redelivered events
    wait on each other rather than deadlock); a copy delivered twice within the
    batch counts once.
    """
    claimed = await claim_all(connection, (event.event_id for event in events), topic)
    fresh = []
    for event in events:
        if event.event_id in claimed:
            claimed.discard(event.event_id)
            fresh.append(event)
    return fresh
