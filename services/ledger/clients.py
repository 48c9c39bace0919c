"""Which API clients are revoked: a projection of ``clients.lifecycle.v1``.

A client's token stays valid until it expires (minutes), but a revoked client
must not read members' balances or histories for those minutes: the read API
asks this projection on every request a client makes.
"""

from __future__ import annotations

import asyncpg

from contracts import ClientLifecycleEvent

UPSERT_STANDING = """
INSERT INTO client_standing (client_id, revoked, occurred_at) VALUES ($1, $2, $3)
ON CONFLICT (client_id) DO UPDATE SET
    revoked = EXCLUDED.revoked, occurred_at = EXCLUDED.occurred_at
WHERE client_standing.occurred_at < EXCLUDED.occurred_at
"""
IS_REVOKED = "SELECT revoked FROM client_standing WHERE client_id = $1"


async def project_clients(
    connection: asyncpg.Connection, events: list[ClientLifecycleEvent]
) -> None:
    """Keep each client's newest standing (an older event arriving late changes nothing)."""
    for event in events:
        client = event.data
        await connection.execute(
            UPSERT_STANDING, client.client_id, client.status == "revoked", event.occurred_at
        )


async def is_revoked(pool: asyncpg.Pool, client_id: str) -> bool:
    """Whether the client has been revoked (as far as its events have arrived)."""
    return bool(await pool.fetchval(IS_REVOKED, client_id))
