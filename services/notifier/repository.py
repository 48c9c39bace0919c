"""Every SQL statement of the notifier, and the rows they return."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

#: Stored as ``last_error`` when a callback waits for its client's lifecycle event.
UNKNOWN_CLIENT_ERROR = "unknown client: no clients.lifecycle.v1 event seen for it yet"

UPSERT_CLIENT = """
INSERT INTO clients (
    client_id, org_id, environment, status, signing_key_salt,
    previous_signing_key_salt, previous_salt_valid_until, expiry_callback_url, occurred_at
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (client_id) DO UPDATE SET
    org_id = EXCLUDED.org_id,
    environment = EXCLUDED.environment,
    status = EXCLUDED.status,
    signing_key_salt = EXCLUDED.signing_key_salt,
    previous_signing_key_salt = EXCLUDED.previous_signing_key_salt,
    previous_salt_valid_until = EXCLUDED.previous_salt_valid_until,
    expiry_callback_url = EXCLUDED.expiry_callback_url,
    occurred_at = EXCLUDED.occurred_at
WHERE clients.occurred_at < EXCLUDED.occurred_at
RETURNING client_id
"""

# The salts a client's callbacks are signed with now: the previous one too while
# its rotation overlap lasts.
CLIENT_SALTS = """
SELECT signing_key_salt,
       CASE WHEN previous_salt_valid_until > now() THEN previous_signing_key_salt END
           AS previous_signing_key_salt
FROM clients WHERE client_id = $1
"""

# Where each of these clients wants its points.expired callbacks (null: nowhere);
# a client not projected yet has no row.
EXPIRY_CALLBACK_URLS = """
SELECT client_id, expiry_callback_url FROM clients WHERE client_id = ANY($1::text[])
"""

# Callbacks that failed only because the client was not projected yet go out
# as soon as it is, instead of after their next retry delay; those that ran out
# of attempts waiting for it start a fresh schedule. (Both topics are consumed
# independently, so a result can overtake its client's lifecycle event.)
RETRY_AWAITING_CLIENT = """
UPDATE deliveries
SET status = 'pending',
    attempts = CASE WHEN status = 'parked' THEN 0 ELSE attempts END,
    next_attempt_at = now(),
    updated_at = now()
WHERE client_id = $1 AND status IN ('pending', 'parked') AND last_error = $2
RETURNING id
"""

# Serialises a client's projection with the holding of its expiries while it is not
# projected, so an expiry never waits for a client whose event committed meanwhile.
# (Advisory: there is no row to lock before the client's first event.)
LOCK_CLIENT = "SELECT pg_advisory_xact_lock(hashtextextended('notifier.client:' || $1, 0))"

# A points.expired callback whose client is not projected yet (migration 0006).
HOLD_FOR_CLIENT = """
INSERT INTO expiries_awaiting_client (
    delivery_id, client_id, org_id, environment, request_id, transaction_id, body
) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING delivery_id
"""

TAKE_HELD_FOR_CLIENT = """
DELETE FROM expiries_awaiting_client WHERE client_id = $1
RETURNING delivery_id, client_id, org_id, environment, request_id, transaction_id, body
"""

INSERT_DELIVERY = """
INSERT INTO deliveries (
    event_id, client_id, org_id, environment, request_id, transaction_id, url, host, body
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (event_id) DO NOTHING
RETURNING id
"""

# Conflicts on event_id (a redelivered event) or on notification_id (the same
# share request in another event) both leave the queued e-mail alone.
INSERT_EMAIL_DELIVERY = """
INSERT INTO deliveries (
    kind, event_id, notification_id, org_id, environment, recipients, host, body
) VALUES ('email', $1, $2, $3, $4, $5, '', $6)
ON CONFLICT DO NOTHING
RETURNING id
"""

# Fair claiming. Each organisation's oldest due delivery of the kind is a
# candidate (organisations at their limit in this process, and hosts at theirs,
# are left out); the one whose organisation has the fewest deliveries in flight
# here goes first, the oldest among equals. SKIP LOCKED lets workers (in this
# and other replicas) claim different rows without waiting on each other, and
# the lease conditions are repeated beside FOR UPDATE so a row another replica
# claimed since this statement's snapshot is re-checked and passed over. The
# lease keeps the row theirs while they send outside any transaction, and
# counting the attempt now means a callback that crashes its sender still runs
# out of attempts.
CLAIM_DUE = """
WITH candidates AS (
    SELECT DISTINCT ON (d.org_id) d.id, d.org_id, d.next_attempt_at
    FROM deliveries AS d
    WHERE d.status = 'pending'
      AND d.kind = $2
      AND d.next_attempt_at <= now()
      AND (d.locked_until IS NULL OR d.locked_until <= now())
      AND d.org_id <> ALL($5::text[])
      AND NOT EXISTS (
          SELECT 1 FROM unnest($6::text[], $7::text[]) AS full_host(org_id, host)
          WHERE full_host.org_id = d.org_id AND full_host.host = d.host
      )
    ORDER BY d.org_id, d.next_attempt_at
),
due AS (
    SELECT d.id
    FROM deliveries AS d
    JOIN candidates AS c ON c.id = d.id
    LEFT JOIN unnest($3::text[], $4::int[]) AS busy(org_id, in_flight)
           ON busy.org_id = c.org_id
    WHERE d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until <= now())
    ORDER BY coalesce(busy.in_flight, 0), c.next_attempt_at
    LIMIT 1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries AS d
SET locked_until = now() + $1::interval, attempts = d.attempts + 1, updated_at = now()
FROM due WHERE d.id = due.id
RETURNING d.id, d.kind, d.event_id, d.org_id, d.client_id, d.request_id, d.url, d.host,
          d.body, d.attempts, d.notification_id, d.recipients
"""

SECONDS_UNTIL_DUE = """
SELECT EXTRACT(EPOCH FROM min(greatest(next_attempt_at, coalesce(locked_until, next_attempt_at)))
       - now())::float8
FROM deliveries WHERE status = 'pending' AND kind = $1
"""

# Each statement below names the attempt it records, so a worker whose lease
# expired (and whose delivery another worker took over) changes nothing.
MARK_DELIVERED = """
UPDATE deliveries
SET status = 'delivered', delivered_at = now(), locked_until = NULL,
    last_status_code = $3, last_error = NULL, updated_at = now()
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

SCHEDULE_RETRY = """
UPDATE deliveries
SET next_attempt_at = now() + $3::interval, locked_until = NULL,
    last_status_code = $4, last_error = $5, updated_at = now()
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

PARK = """
UPDATE deliveries
SET status = 'parked', locked_until = NULL, last_status_code = $3, last_error = $4,
    updated_at = now()
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

FAIL = """
UPDATE deliveries
SET status = 'failed', locked_until = NULL, last_status_code = $3, last_error = $4,
    updated_at = now()
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

# A delivery that gave up (parked) or was refused for good (failed) starts a
# fresh schedule: an operator replays it once the receiver is fixed.
REPLAY = """
UPDATE deliveries
SET status = 'pending', attempts = 0, next_attempt_at = now(), locked_until = NULL,
    updated_at = now()
WHERE id = $1 AND status IN ('parked', 'failed')
RETURNING id
"""

REPLAY_ALL_PARKED = """
UPDATE deliveries
SET status = 'pending', attempts = 0, next_attempt_at = now(), locked_until = NULL,
    updated_at = now()
WHERE status = 'parked'
RETURNING id
"""

LIST_DELIVERIES = """
SELECT id, kind, event_id, client_id, org_id, environment, request_id, transaction_id, url,
       notification_id, recipients, status, attempts, next_attempt_at, last_status_code,
       last_error, created_at, updated_at, delivered_at
FROM deliveries
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
ORDER BY updated_at DESC, id DESC
LIMIT $3
"""

DELIVERY_COUNTS = """
SELECT kind, status, count(*) AS deliveries FROM deliveries GROUP BY kind, status
"""

OLDEST_PENDING_AGE = """
SELECT coalesce(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
FROM deliveries WHERE status = 'pending'
"""


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery a worker holds the lease on, with the attempt it is making."""

    id: int
    event_id: UUID
    org_id: str
    body: bytes
    attempt: int


@dataclass(frozen=True)
class ClaimedCallback(ClaimedDelivery):
    """A signed HTTP callback; ``body`` is the JSON that is signed and posted."""

    client_id: str
    request_id: str
    url: str
    host: str


@dataclass(frozen=True)
class ClaimedEmail(ClaimedDelivery):
    """A share e-mail; ``body`` is the complete message as sent over SMTP."""

    notification_id: UUID
    recipients: tuple[str, ...]


async def upsert_client(
    connection: asyncpg.Connection,
    *,
    client_id: str,
    org_id: str,
    environment: str,
    status: str,
    signing_key_salt: str,
    previous_signing_key_salt: str | None = None,
    previous_salt_valid_until: datetime | None = None,
    expiry_callback_url: str | None = None,
    occurred_at: datetime,
) -> bool:
    """Store the client unless a newer event already did; True when stored."""
    row = await connection.fetchval(
        UPSERT_CLIENT,
        client_id,
        org_id,
        environment,
        status,
        signing_key_salt,
        previous_signing_key_salt,
        previous_salt_valid_until,
        expiry_callback_url,
        occurred_at,
    )
    return row is not None


async def client_salts(
    connection: asyncpg.Connection | asyncpg.Pool, client_id: str
) -> list[str] | None:
    """The salts the client's callbacks are signed with now, the current one first
    (and the previous one during a rotation's overlap); None for an unknown client."""
    row = await connection.fetchrow(CLIENT_SALTS, client_id)
    if row is None:
        return None
    return [salt for salt in row if salt is not None]


async def expiry_callback_urls(
    connection: asyncpg.Connection, client_ids: list[str]
) -> dict[str, str | None]:
    """The ``points.expired`` callback URL of each of these clients the notifier knows
    (None for one that registered none)."""
    rows = await connection.fetch(EXPIRY_CALLBACK_URLS, client_ids)
    return {row["client_id"]: row["expiry_callback_url"] for row in rows}


async def retry_awaiting_client(connection: asyncpg.Connection, client_id: str) -> int:
    return len(await connection.fetch(RETRY_AWAITING_CLIENT, client_id, UNKNOWN_CLIENT_ERROR))


@dataclass(frozen=True)
class NewDelivery:
    """A callback to queue: where it goes and the exact bytes it carries."""

    event_id: UUID
    client_id: str
    org_id: str
    environment: str
    request_id: str
    transaction_id: UUID
    url: str
    host: str
    body: bytes


async def lock_clients(connection: asyncpg.Connection, client_ids: Iterable[str]) -> None:
    """Hold these clients' advisory locks until the transaction ends (sorted: two
    transactions taking several queue rather than deadlock)."""
    for client_id in sorted(set(client_ids)):
        await connection.execute(LOCK_CLIENT, client_id)


async def hold_for_client(connection: asyncpg.Connection, delivery: NewDelivery) -> bool:
    """Keep an expiry's callback until its client is projected (its ``url`` and ``host``
    are not known yet, and not kept); False when it is held already."""
    row = await connection.fetchval(
        HOLD_FOR_CLIENT,
        delivery.event_id,
        delivery.client_id,
        delivery.org_id,
        delivery.environment,
        delivery.request_id,
        delivery.transaction_id,
        delivery.body,
    )
    return row is not None


async def take_held_for_client(
    connection: asyncpg.Connection, client_id: str, url: str | None, host: str
) -> list[NewDelivery]:
    """Remove the expiries held for the client: as deliveries to ``url``, or none when
    the client registered no expiry callback URL (``None``)."""
    rows = await connection.fetch(TAKE_HELD_FOR_CLIENT, client_id)
    if url is None:
        return []
    return [
        NewDelivery(
            event_id=row["delivery_id"],
            client_id=row["client_id"],
            org_id=row["org_id"],
            environment=row["environment"],
            request_id=row["request_id"],
            transaction_id=row["transaction_id"],
            url=url,
            host=host,
            body=row["body"],
        )
        for row in rows
    ]


async def insert_delivery(connection: asyncpg.Connection, delivery: NewDelivery) -> bool:
    """Queue a callback; False when one for the same event exists already."""
    row = await connection.fetchval(
        INSERT_DELIVERY,
        delivery.event_id,
        delivery.client_id,
        delivery.org_id,
        delivery.environment,
        delivery.request_id,
        delivery.transaction_id,
        delivery.url,
        delivery.host,
        delivery.body,
    )
    return row is not None


@dataclass(frozen=True)
class NewEmail:
    """A share e-mail to queue: its recipients and the rendered message."""

    event_id: UUID
    notification_id: UUID
    org_id: str
    environment: str
    recipients: tuple[str, ...]
    message: bytes


async def insert_email(connection: asyncpg.Connection, email: NewEmail) -> bool:
    """Queue a share e-mail; False when its notification was queued already."""
    row = await connection.fetchval(
        INSERT_EMAIL_DELIVERY,
        email.event_id,
        email.notification_id,
        email.org_id,
        email.environment,
        list(email.recipients),
        email.message,
    )
    return row is not None


async def claim_due(
    executor: Executor,
    *,
    kind: str,
    lease_seconds: float,
    in_flight: dict[str, int],
    full_organisations: list[str],
    full_hosts: list[tuple[str, str]],
) -> ClaimedCallback | ClaimedEmail | None:
    """Lease the fairest due delivery of ``kind``: from the organisation with the fewest
    deliveries ``in_flight``, never one of ``full_organisations`` or ``full_hosts``
    (organisation, host). One statement, so on a pool it commits on its own."""
    row = await executor.fetchrow(
        CLAIM_DUE,
        _interval(lease_seconds),
        kind,
        list(in_flight),
        list(in_flight.values()),
        full_organisations,
        [org_id for org_id, _ in full_hosts],
        [host for _, host in full_hosts],
    )
    if row is None:
        return None
    if row["kind"] == "email":
        return ClaimedEmail(
            id=row["id"],
            event_id=row["event_id"],
            org_id=row["org_id"],
            body=bytes(row["body"]),
            attempt=row["attempts"],
            notification_id=row["notification_id"],
            recipients=tuple(row["recipients"]),
        )
    return ClaimedCallback(
        id=row["id"],
        event_id=row["event_id"],
        org_id=row["org_id"],
        body=bytes(row["body"]),
        attempt=row["attempts"],
        client_id=row["client_id"],
        request_id=row["request_id"],
        url=row["url"],
        host=row["host"],
    )


async def seconds_until_due(pool: asyncpg.Pool, kind: str) -> float | None:
    seconds: float | None = await pool.fetchval(SECONDS_UNTIL_DUE, kind)
    return seconds


async def mark_delivered(pool: asyncpg.Pool, delivery: ClaimedDelivery, status_code: int) -> None:
    await pool.execute(MARK_DELIVERED, delivery.id, delivery.attempt, status_code)


async def schedule_retry(
    pool: asyncpg.Pool,
    delivery: ClaimedDelivery,
    *,
    delay_seconds: float,
    status_code: int | None,
    error: str,
) -> None:
    await pool.execute(
        SCHEDULE_RETRY,
        delivery.id,
        delivery.attempt,
        _interval(delay_seconds),
        status_code,
        error,
    )


async def park(
    pool: asyncpg.Pool, delivery: ClaimedDelivery, *, status_code: int | None, error: str
) -> None:
    await pool.execute(PARK, delivery.id, delivery.attempt, status_code, error)


async def fail(
    pool: asyncpg.Pool, delivery: ClaimedDelivery, *, status_code: int | None, error: str
) -> None:
    await pool.execute(FAIL, delivery.id, delivery.attempt, status_code, error)


#: A pool (the service) or one connection (the CLI, inside its transaction).
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def replay(executor: Executor, delivery_id: int) -> bool:
    """Send a parked or failed delivery again; False when there is no such delivery."""
    return await executor.fetchval(REPLAY, delivery_id) is not None


async def replay_all_parked(executor: Executor) -> list[int]:
    return [row["id"] for row in await executor.fetch(REPLAY_ALL_PARKED)]


async def list_deliveries(
    executor: Executor, *, status: str | None, kind: str | None = None, limit: int
) -> list[dict[str, Any]]:
    rows = await executor.fetch(LIST_DELIVERIES, status, kind, limit)
    return [dict(row.items()) for row in rows]


async def delivery_state(pool: asyncpg.Pool) -> tuple[dict[tuple[str, str], int], float]:
    """Deliveries by (kind, status), and seconds since the oldest pending one was queued.

    Its own read-only snapshot, so that the two figures agree: a metrics scrape, its one
    caller, has no unit of work to join."""
    async with (
        pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        rows = await connection.fetch(DELIVERY_COUNTS)
        oldest: float = await connection.fetchval(OLDEST_PENDING_AGE)
    return {(row["kind"], row["status"]): row["deliveries"] for row in rows}, oldest


def _interval(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
