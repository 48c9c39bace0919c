"""The inbox: exactly-once effects from at-least-once delivery.

A consumer calls :func:`claim` inside the transaction that applies the
event's effect. The first delivery inserts the event id and goes on; any
redelivery finds the id already there and skips the effect. Because the
insert and the effect commit or roll back together, a crash between them
leaves neither.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

CLAIM = """
INSERT INTO inbox (event_id, topic) VALUES ($1, $2)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


async def claim(connection: asyncpg.Connection, event_id: UUID, topic: str) -> bool:
    """Record ``event_id`` as processed; False when it already was."""
    assert connection.is_in_transaction(), "claim must run in the effect's transaction"
    return await connection.fetchval(CLAIM, event_id, topic) is not None
