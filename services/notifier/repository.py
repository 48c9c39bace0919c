"""Every SQL statement of the notifier, and the rows they return."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

# A batch of callbacks in one statement; one whose event was queued already stays
# as it is and is not returned.
INSERT_DELIVERIES = """
INSERT INTO deliveries (
    event_id, client_id, org_id, environment, request_id, transaction_id, url, host, body
)
SELECT * FROM unnest(
    $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
    $8::text[], $9::bytea[]
)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

# Conflicts on event_id (a redelivered event) or on notification_id (the same
# share request in another event) both leave the queued e-mail alone.
INSERT_EMAIL_DELIVERY = """
INSERT INTO deliveries (
    kind, event_id, notification_id, org_id, environment, recipients, host, body, sealed_secret
) VALUES ('email', $1, $2, $3, $4, $5, '', $6, $7)
ON CONFLICT DO NOTHING
RETURNING id
"""

# Fair claiming, a batch at a time. The organisations with pending deliveries
# of the kind are found by skipping along the deliveries_due_by_organisation
# index (one probe each, however long their queues), and each organisation
# that has room here offers its oldest due deliveries, as many as its room, from
# the same index; rows leased by senders, and rows to hosts that are full here,
# are passed over. Of those, a delivery's place is its organisation's deliveries
# in flight here plus its rank in the organisation's offer: the organisation
# with the fewest in flight goes first, the others take turns, and the oldest
# goes first among equals. A host takes at most its room too. SKIP LOCKED lets
# replicas claim side by side, and the lease conditions are repeated beside
# FOR UPDATE so a row another replica claimed since this statement's snapshot
# is passed over. The lease keeps each row its sender's while it sends outside
# any transaction, and counting the attempt now means a callback that crashes
# its sender still runs out of attempts. The client's salts come along, so a
# callback is signed with what they are at its claim.
CLAIM_DUE = """
WITH RECURSIVE organisations AS (
    (SELECT org_id FROM deliveries
     WHERE status = 'pending' AND kind = $2
     ORDER BY org_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.org_id FROM deliveries AS d
            WHERE d.status = 'pending' AND d.kind = $2 AND d.org_id > o.org_id
            ORDER BY d.org_id LIMIT 1)
    FROM organisations AS o
    WHERE o.org_id IS NOT NULL
),
hosts AS (
    SELECT * FROM unnest($7::text[], $8::text[], $9::int[]) AS h(org_id, host, in_flight)
),
with_room AS (
    SELECT o.org_id, coalesce(busy.in_flight, 0) AS in_flight,
           ARRAY(SELECT hosts.host FROM hosts
                 WHERE hosts.org_id = o.org_id AND hosts.in_flight >= $10) AS full_hosts
    FROM organisations AS o
    LEFT JOIN unnest($4::text[], $5::int[]) AS busy(org_id, in_flight) USING (org_id)
    WHERE o.org_id IS NOT NULL AND coalesce(busy.in_flight, 0) < $6
),
offered AS (
    SELECT c.id, c.host, c.next_attempt_at, r.org_id, r.in_flight,
           row_number() OVER (PARTITION BY r.org_id ORDER BY c.next_attempt_at, c.id)
               AS org_rank,
           row_number() OVER (PARTITION BY r.org_id, c.host ORDER BY c.next_attempt_at, c.id)
               AS host_rank
    FROM with_room AS r
    CROSS JOIN LATERAL (
        SELECT d.id, d.host, d.next_attempt_at
        FROM deliveries AS d
        WHERE d.status = 'pending' AND d.kind = $2 AND d.org_id = r.org_id
          AND d.next_attempt_at <= now()
          AND (d.locked_until IS NULL OR d.locked_until <= now())
          -- Not `host <> ALL(...)`: the planner would expect it to leave no row, and
          -- read the whole table rather than the first rows of the index.
          AND array_position(r.full_hosts, d.host) IS NULL
        -- kind and org_id are fixed here; naming them lets the index's order serve.
        ORDER BY d.kind, d.org_id, d.next_attempt_at
        LIMIT $6 - r.in_flight
    ) AS c
),
picked AS (
    SELECT offered.id
    FROM offered
    LEFT JOIN hosts ON hosts.org_id = offered.org_id AND hosts.host = offered.host
    WHERE offered.host_rank <= $10 - coalesce(hosts.in_flight, 0)
    ORDER BY offered.in_flight + offered.org_rank, offered.next_attempt_at
    LIMIT $3
),
due AS (
    SELECT d.id, d.client_id
    FROM deliveries AS d
    JOIN picked USING (id)
    WHERE d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until <= now())
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries AS d
SET locked_until = now() + $1::interval, attempts = d.attempts + 1, updated_at = now()
FROM due
LEFT JOIN clients AS c ON c.client_id = due.client_id
WHERE d.id = due.id
RETURNING d.id, d.kind, d.event_id, d.org_id, d.client_id, d.request_id, d.url, d.host,
          d.body, d.attempts, d.notification_id, d.recipients, d.sealed_secret,
          c.signing_key_salt,
          CASE WHEN c.previous_salt_valid_until > now() THEN c.previous_signing_key_salt END
              AS previous_signing_key_salt
"""

# When the next delivery of the kind that is not due yet falls due (a retry); the
# deliveries_due index hands it over without looking at the due ones. Leases that
# run out (a sender that died) are found by the workers' poll.
SECONDS_UNTIL_NEXT_DUE = """
SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now())::float8
FROM deliveries
WHERE status = 'pending' AND kind = $1 AND next_attempt_at > now()
"""

# Each statement below names the attempt it records, so a worker whose lease
# expired (and whose delivery another worker took over) changes nothing.
MARK_DELIVERED = """
UPDATE deliveries AS d
SET status = 'delivered', delivered_at = now(), locked_until = NULL,
    last_status_code = marked.status_code, last_error = NULL, last_attempt_at = now(),
    updated_at = now()
FROM unnest($1::bigint[], $2::int[], $3::int[]) AS marked(id, attempt, status_code)
WHERE d.id = marked.id AND d.attempts = marked.attempt AND d.status = 'pending'
"""

SCHEDULE_RETRY = """
UPDATE deliveries
SET next_attempt_at = now() + $3::interval, locked_until = NULL,
    last_status_code = $4, last_error = $5, last_attempt_at = now(), updated_at = now()
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

PARK = """
UPDATE deliveries
SET status = 'parked', locked_until = NULL, last_status_code = $3, last_error = $4,
    last_attempt_at = now(), updated_at = now()
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

FAIL = """
UPDATE deliveries
SET status = 'failed', locked_until = NULL, last_status_code = $3, last_error = $4,
    last_attempt_at = now(), updated_at = now()
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

# A business user replays its own organisation's parked callbacks only.
REPLAY_PARKED_CALLBACK_OF_ORGANISATION = """
UPDATE deliveries
SET status = 'pending', attempts = 0, next_attempt_at = now(), locked_until = NULL,
    updated_at = now()
WHERE id = $1 AND org_id = $2 AND kind = 'callback' AND status = 'parked'
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
       NULLIF(host, '') AS host, notification_id, recipients, status, attempts,
       next_attempt_at, last_status_code, last_error, last_attempt_at, created_at, updated_at,
       delivered_at
FROM deliveries
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
  AND ($4::text IS NULL OR client_id = $4)
ORDER BY updated_at DESC, id DESC
LIMIT $3
"""

# A business's callback log: its organisation's callbacks (CALLBACK_LOG_OF_CLIENT: one
# client's) with one of the statuses $2, newest first, those before an id. Each status
# is a range of the deliveries_callback_log index (…_by_client), at most a page long;
# the ranges are merged, so a page costs a few index probes however many callbacks the
# organisation has, and however few of them have the status asked for (migration 0007).
# The statuses are spelled out, one branch each, rather than taken from $2 in a lateral
# join: with the status a parameter the planner cannot see that parked callbacks are
# rare, and walks the primary key backwards through an organisation's delivered ones.
# Never the URL: its query may hold the receiver's own credentials; the host says
# where it goes.
_CALLBACK_LOG_BRANCH = """(
    SELECT id, kind, event_id, client_id, org_id, environment, request_id, transaction_id,
           host, status, attempts, next_attempt_at, last_status_code, last_error,
           last_attempt_at, created_at, updated_at, delivered_at
    FROM deliveries
    WHERE kind = 'callback' AND org_id = $1 AND status = '{status}' AND id < $3 {of_client}
      AND '{status}' = ANY($2::text[])
    ORDER BY id DESC
    LIMIT $4
)"""
_CALLBACK_LOG = (
    "\nUNION ALL\n".join(
        _CALLBACK_LOG_BRANCH.replace("{status}", status)
        for status in ("pending", "delivered", "parked", "failed")
    )
    + "\nORDER BY id DESC\nLIMIT $4\n"
)
CALLBACK_LOG = _CALLBACK_LOG.format(of_client="")
CALLBACK_LOG_OF_CLIENT = _CALLBACK_LOG.format(of_client="AND client_id = $5")

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
    #: What the callback is signed with: the client's salt, and the previous one too
    #: during a rotation's overlap; empty while the client is not projected yet.
    salts: tuple[str, ...]


@dataclass(frozen=True)
class ClaimedEmail(ClaimedDelivery):
    """A share e-mail; ``body`` is the complete message as sent over SMTP."""

    notification_id: UUID
    recipients: tuple[str, ...]
    #: An invitation's link token, sealed; the body holds a placeholder in its place.
    sealed_secret: str | None = None


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


async def insert_deliveries(
    connection: asyncpg.Connection, deliveries: Sequence[NewDelivery]
) -> list[NewDelivery]:
    """Queue these callbacks; those whose event was queued already are left out of the
    answer (and stay as they are)."""
    if not deliveries:
        return []
    columns = zip(*(_columns(delivery) for delivery in deliveries), strict=True)
    rows = await connection.fetch(INSERT_DELIVERIES, *(list(column) for column in columns))
    queued = {row["event_id"] for row in rows}
    # Two results of one expiry in a batch are one delivery: the first stands for it.
    first: dict[UUID, NewDelivery] = {}
    for delivery in deliveries:
        first.setdefault(delivery.event_id, delivery)
    return [delivery for event_id, delivery in first.items() if event_id in queued]


def _columns(delivery: NewDelivery) -> tuple[Any, ...]:
    return (
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


@dataclass(frozen=True)
class NewEmail:
    """A share e-mail to queue: its recipients and the rendered message."""

    event_id: UUID
    notification_id: UUID
    org_id: str
    environment: str
    recipients: tuple[str, ...]
    message: bytes
    sealed_secret: str | None = None


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
        email.sealed_secret,
    )
    return row is not None


async def claim_due(
    executor: Executor,
    *,
    kind: str,
    lease_seconds: float,
    limit: int,
    in_flight: dict[str, int],
    organisation_limit: int,
    hosts_in_flight: dict[tuple[str, str], int],
    host_limit: int,
) -> list[ClaimedCallback | ClaimedEmail]:
    """Lease up to ``limit`` due deliveries of ``kind``, fairly: the organisation with the
    fewest ``in_flight`` first, none past ``organisation_limit`` with what it has in
    flight, and no (organisation, host) past ``host_limit`` with ``hosts_in_flight``.
    One statement, so on a pool it commits on its own."""
    rows = await executor.fetch(
        CLAIM_DUE,
        _interval(lease_seconds),
        kind,
        limit,
        list(in_flight),
        list(in_flight.values()),
        organisation_limit,
        [org_id for org_id, _ in hosts_in_flight],
        [host for _, host in hosts_in_flight],
        list(hosts_in_flight.values()),
        host_limit,
    )
    return [_claimed(row) for row in rows]


def _claimed(row: asyncpg.Record) -> ClaimedCallback | ClaimedEmail:
    if row["kind"] == "email":
        return ClaimedEmail(
            id=row["id"],
            event_id=row["event_id"],
            org_id=row["org_id"],
            body=bytes(row["body"]),
            attempt=row["attempts"],
            notification_id=row["notification_id"],
            recipients=tuple(row["recipients"]),
            sealed_secret=row["sealed_secret"],
        )
    salts = (row["signing_key_salt"], row["previous_signing_key_salt"])
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
        salts=tuple(salt for salt in salts if salt is not None),
    )


async def seconds_until_next_due(pool: asyncpg.Pool, kind: str) -> float | None:
    """Seconds until a delivery of ``kind`` that is not due yet falls due; None for none."""
    seconds: float | None = await pool.fetchval(SECONDS_UNTIL_NEXT_DUE, kind)
    return seconds


async def mark_delivered(
    pool: asyncpg.Pool, delivered: Sequence[tuple[ClaimedDelivery, int]]
) -> None:
    """Mark these attempts delivered, each with the status code it was answered with."""
    await pool.execute(
        MARK_DELIVERED,
        [delivery.id for delivery, _ in delivered],
        [delivery.attempt for delivery, _ in delivered],
        [status_code for _, status_code in delivered],
    )


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


async def replay_parked_callback_of_organisation(
    executor: Executor, delivery_id: int, org_id: str
) -> bool:
    """Send the organisation's parked callback again; False when it has no such callback."""
    return (
        await executor.fetchval(REPLAY_PARKED_CALLBACK_OF_ORGANISATION, delivery_id, org_id)
        is not None
    )


async def list_deliveries(
    executor: Executor,
    *,
    status: str | None,
    kind: str | None = None,
    client_id: str | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await executor.fetch(LIST_DELIVERIES, status, kind, limit, client_id)
    return [dict(row.items()) for row in rows]


async def callback_log(
    executor: Executor,
    org_id: str,
    *,
    client_id: str | None,
    statuses: Sequence[str],
    before_id: int,
    limit: int,
) -> list[dict[str, Any]]:
    """The organisation's callbacks (only ``client_id``'s, when given) with one of
    ``statuses``, newest first, those with an id below ``before_id``."""
    if client_id is None:
        rows = await executor.fetch(CALLBACK_LOG, org_id, list(statuses), before_id, limit)
    else:
        rows = await executor.fetch(
            CALLBACK_LOG_OF_CLIENT, org_id, list(statuses), before_id, limit, client_id
        )
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


# Delivered callbacks and e-mails past their retention ($2 days), a batch of at most $1
# (infra/retention.py); pending, parked and failed ones stay for their sender or an
# operator. The (status, updated_at) index finds them; delivered rows are not updated again.
PURGE_DELIVERED = """
DELETE FROM deliveries WHERE id = ANY (ARRAY(
    SELECT id FROM deliveries
    WHERE status = 'delivered' AND updated_at < now() - $2::float8 * interval '1 day'
    LIMIT $1
    FOR UPDATE SKIP LOCKED
))
"""
