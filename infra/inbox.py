"""The inbox: exactly-once effects from at-least-once delivery.

A consumer calls :func:`claim` inside the transaction that applies the
event's effect. The first delivery inserts the event id and goes on; any
redelivery finds the id already there and skips the effect. Because the
insert and the effect commit or roll back together, a crash between them
leaves neither.

Each row also says where its event was read from (``kafka_partition``,
``kafka_offset``), when a consumer of :mod:`infra.consumers` delivered it: the
consumer names each event's position around the handler (:func:`delivered_from`),
so services claim as before and the claim stays one statement. Rows are purged
only once no redelivery of their event is possible (:mod:`infra.retention`,
decision 0022), and the position is how the purge knows the consumer group's
committed offset is past the event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Protocol, TypeVar
from uuid import UUID

import asyncpg

CLAIM = """
INSERT INTO inbox (event_id, topic, kafka_partition, kafka_offset) VALUES ($1, $2, $3, $4)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
# Rows go in event id order, so two transactions claiming overlapping sets wait
# on each other instead of deadlocking.
CLAIM_ALL = """
INSERT INTO inbox (event_id, topic, kafka_partition, kafka_offset)
SELECT event_id, $2, kafka_partition, kafka_offset
FROM unnest($1::uuid[], $3::int[], $4::bigint[])
    AS claimed (event_id, kafka_partition, kafka_offset)
ORDER BY event_id
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


Position = tuple[int, int]
"""Where a message was read: its partition and offset."""
_NOWHERE: Mapping[UUID, Position] = {}
_positions: ContextVar[Mapping[UUID, Position]] = ContextVar("inbox_positions", default=_NOWHERE)


@contextlib.contextmanager
def delivered_from(positions: Mapping[UUID, Position]) -> Iterator[None]:
    """While the block runs, claims record each event's partition and offset from
    ``positions`` (event id to where it was read); events not in it get none."""
    token = _positions.set(positions)
    try:
        yield
    finally:
        _positions.reset(token)


def position_of(event_id: UUID) -> tuple[int | None, int | None]:
    """Where the consumer read ``event_id`` (partition, offset), or (None, None)."""
    return _positions.get().get(event_id, (None, None))


async def claim(connection: asyncpg.Connection, event_id: UUID, topic: str) -> bool:
    """Record ``event_id`` as processed; False when it already was."""
    assert connection.is_in_transaction(), "claim must run in the effect's transaction"
    return await connection.fetchval(CLAIM, event_id, topic, *position_of(event_id)) is not None


async def claim_all(
    connection: asyncpg.Connection, event_ids: Iterable[UUID], topic: str
) -> set[UUID]:
    """:func:`claim` for many events in one round trip; the ids claimed now."""
    assert connection.is_in_transaction(), "claim_all must run in the effects' transaction"
    ids = sorted(set(event_ids))
    if not ids:
        return set()
    positions = [position_of(event_id) for event_id in ids]
    partitions = [partition for partition, _ in positions]
    offsets = [offset for _, offset in positions]
    rows = await connection.fetch(CLAIM_ALL, ids, topic, partitions, offsets)
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
