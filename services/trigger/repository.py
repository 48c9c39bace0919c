"""Every SQL statement of the trigger gateway, and the thin functions that run them.

Connections see the ``trigger`` schema first (``search_path``), so table names are
unqualified. Batch statements take PostgreSQL arrays, one element a trigger or a
request, so a batch costs one round trip whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from contracts import ClientSnapshot, MemberStanding, RuleSnapshot
from infra.db import array_columns

UPSERT_RULE = """
INSERT INTO rules (
    rule_id, org_id, environment, name, type, status, api_trigger, authorized_client_ids,
    cap_max, cap_per_member, max_amount_per_request, starts_at, ends_at, version,
    points_expire_after_days, points_expire_at
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (rule_id) DO UPDATE SET
    name = EXCLUDED.name, type = EXCLUDED.type, status = EXCLUDED.status,
    api_trigger = EXCLUDED.api_trigger, authorized_client_ids = EXCLUDED.authorized_client_ids,
    cap_max = EXCLUDED.cap_max, cap_per_member = EXCLUDED.cap_per_member,
    max_amount_per_request = EXCLUDED.max_amount_per_request,
    starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
    version = EXCLUDED.version, points_expire_after_days = EXCLUDED.points_expire_after_days,
    points_expire_at = EXCLUDED.points_expire_at, projected_at = now()
WHERE rules.version < EXCLUDED.version
"""
# The client's own rate limit ($7, $8) comes with it, and applies from the next trigger
# (the bucket takes the limit in force each time). It is written only when the client's
# change is not older than the one projected (the CTE returns no row otherwise), so a
# replay ends on the latest limit. A snapshot without one ($7 null: the client has none
# of its own, or the event predates the field) leaves the limit as it is: an operator
# may have set it here before limits travelled on the topic.
UPSERT_CLIENT = """
WITH projected AS (
    INSERT INTO clients (
        client_id, org_id, environment, status, request_signing_key, occurred_at
    ) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (client_id) DO UPDATE SET
        status = EXCLUDED.status,
        request_signing_key = EXCLUDED.request_signing_key,
        occurred_at = EXCLUDED.occurred_at
    WHERE clients.occurred_at <= EXCLUDED.occurred_at
    RETURNING client_id
)
INSERT INTO client_rate_limits (client_id, per_second, burst)
SELECT client_id, $7, $8 FROM projected WHERE $7::double precision IS NOT NULL
ON CONFLICT (client_id) DO UPDATE SET
    per_second = EXCLUDED.per_second, burst = EXCLUDED.burst, updated_at = now()
"""
CLIENT_ACCESS = "SELECT status, request_signing_key FROM clients WHERE client_id = $1"
# A member's standing; a change older than the one projected changes nothing.
UPSERT_MEMBER_STANDING = """
INSERT INTO member_standings (environment, org_id, user_id, blocked, changed_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (environment, org_id, user_id) DO UPDATE SET
    blocked = EXCLUDED.blocked, changed_at = EXCLUDED.changed_at
WHERE member_standings.changed_at <= EXCLUDED.changed_at
"""

GET_REQUEST = "SELECT * FROM requests WHERE client_id = $1 AND request_id = $2"
# See migrations/0005_batched_triggers.sql (and 0008, 0009 for the arguments it
# gained); one row per trigger of the batch.
RECORD_REQUESTS = """
SELECT request_position, outcome, transaction_id, body_hash
FROM record_points_requests($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                            $14, $15, $16, $17, $18, $19, $20)
"""
# Settles a batch of requests in one statement, so the results consumer's
# transaction stays milliseconds long even while the gateway is busy serving:
# a long one would hold back PostgreSQL's cleanup of the hot rows every trigger
# updates (the rate-limit bucket, cap usage). Arrays are parallel, one element
# a request; a request already settled is left alone.
RECORD_RESULTS = """
UPDATE requests AS r
SET status = s.status, reason = s.reason, balance = s.balance, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
    AS s (client_id, request_id, status, reason, balance)
WHERE r.client_id = s.client_id AND r.request_id = s.request_id AND r.status = 'pending'
RETURNING r.status, r.rule_id, r.user_id, r.cap_reserved, r.member_cap_reserved
"""
# A reversal is recorded once, on a request that succeeded; the row says what the
# request reserved, so only that is released.
RECORD_REVERSAL = """
UPDATE requests SET reversal_id = $3, reversed_amount = $4, uncovered_amount = $5,
    reversed_at = $6, updated_at = now()
WHERE client_id = $1 AND request_id = $2 AND status = 'succeeded' AND reversed_at IS NULL
RETURNING rule_id, user_id, cap_reserved, member_cap_reserved
"""
# Settled requests past their retention ($2 days), a batch of at most $1 so no purge
# holds many row locks or a long transaction (infra/retention.py); SKIP LOCKED lets
# replicas purge together. Pending ones stay: purging them would lose the cap
# reservation a rejection frees.
PURGE_REQUESTS = """
DELETE FROM requests WHERE (client_id, request_id) IN (
    SELECT client_id, request_id FROM requests
    WHERE created_at < now() - $2::float8 * interval '1 day' AND status <> 'pending'
    ORDER BY created_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
"""

# Requests pending longer than $1 seconds, re-published at most once per
# $1 * 2^(times already re-published, up to 6) seconds: 5 min, 10, 20, ... up to
# about 5 h apart at the default. A batch at a time; SKIP LOCKED lets replicas
# reconcile together without publishing one request twice.
REDRIVE_PENDING = """
UPDATE requests SET redriven_at = now(), redrives = redrives + 1
WHERE (client_id, request_id) IN (
    SELECT client_id, request_id FROM requests
    WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1)
        AND (redriven_at IS NULL
             OR redriven_at < now() - make_interval(secs => $1 * 2 ^ least(redrives, 6)))
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING *
"""
# How many requests have been pending longer than $1 seconds, and since when.
OVERDUE_REQUESTS = """
SELECT count(*) AS overdue, min(created_at) AS oldest FROM requests
WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1)
"""

# Caps are reserved by record_points_requests; a rejection or reversal frees them.
RELEASE_CAP = "UPDATE cap_usage SET used = greatest(used - $2, 0) WHERE rule_id = $1"
RELEASE_MEMBER_CAP = """
UPDATE member_cap_usage SET used = greatest(used - $3, 0) WHERE rule_id = $1 AND user_id = $2
"""


# Rate limits: one token bucket per client, refilled from the time elapsed since
# it was last touched and taken from in the same atomic upsert; a client's k-th
# trigger in the batch is granted when the bucket gave at least k tokens. The
# row lock serialises a client's batches across replicas for this statement
# only, and clients are locked in id order. A new bucket starts full. In the
# upsert, EXCLUDED.taken is what the batch asks for (at most a burst, all a
# bucket can hold). The settings' defaults apply unless a client_rate_limits
# row overrides them.
#
# Every table is read through a LATERAL (… LIMIT 1) subquery, or a scalar one,
# so whatever plan the connection caches looks each row up by its key: the
# cached generic plan is made from the statistics of its moment, and one made
# while the tables were empty would otherwise hash-join whole tables for every
# batch. Planning per execution instead cost more than running the statement.
def _taking_tokens(default_per_second: str, default_burst: str) -> str:
    """The CTE ``bucket``: takes what CTE ``wanted`` (``client_id``, ``n``) asks for
    from each client's bucket. The arguments are the parameters holding the
    settings' defaults."""
    return f"""
bucket AS (
    INSERT INTO rate_limit_buckets AS bucket
        (client_id, per_second, burst, tokens, taken, granted, refilled_at)
    SELECT w.client_id, coalesce(l.per_second, {default_per_second}),
           coalesce(l.burst, {default_burst}),
           coalesce(l.burst, {default_burst}) - least(w.n, coalesce(l.burst, {default_burst})),
           least(w.n, coalesce(l.burst, {default_burst})), true, clock_timestamp()
    FROM wanted AS w
    LEFT JOIN LATERAL (
        SELECT per_second, burst FROM client_rate_limits
        WHERE client_rate_limits.client_id = w.client_id LIMIT 1
    ) AS l ON true
    ORDER BY w.client_id
    ON CONFLICT (client_id) DO UPDATE SET
        (per_second, burst, taken, granted, tokens, refilled_at) = (
            SELECT EXCLUDED.per_second, EXCLUDED.burst, took.taken, took.taken > 0,
                   took.tokens - took.taken,
                   greatest(bucket.refilled_at, EXCLUDED.refilled_at)
            FROM (
                SELECT refill.tokens, least(floor(refill.tokens)::integer, EXCLUDED.taken) AS taken
                FROM (
                    SELECT least(
                        EXCLUDED.burst::double precision,
                        bucket.tokens + EXCLUDED.per_second * greatest(
                            0, extract(epoch FROM EXCLUDED.refilled_at - bucket.refilled_at)
                        )
                    ) AS tokens
                ) AS refill
            ) AS took
        )
    RETURNING client_id, taken, tokens, per_second, burst
)"""  # noqa: S608 - what is put in are parameter names, not values


# Everything admitting a batch of triggers reads, in one statement, one row a
# trigger in the order given: its rate-limit token, its client's standing, the
# rule it names (its columns null when there is none), whether the business
# that owns the rule blocked the member, and an earlier request of the client
# with the same requestId. $1-$4 are parallel arrays (client, requestId, rule,
# member: null when the userId is not a valid one, so nothing is looked up) and
# $5/$6 the settings' rate-limit defaults.
ADMIT_TRIGGERS = f"""
WITH requested AS (
    SELECT client_id, request_id, rule_id, user_id, position,
           row_number() OVER (PARTITION BY client_id ORDER BY position) AS rank
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
        AS r (client_id, request_id, rule_id, user_id, position)
), wanted AS (
    SELECT client_id, count(*) AS n FROM requested GROUP BY client_id
), {_taking_tokens("$5", "$6")}
SELECT requested.rank <= bucket.taken AS granted,
       bucket.tokens + greatest(bucket.taken - requested.rank, 0) AS tokens,
       bucket.per_second, bucket.burst,
       client.status AS client_status, client.request_signing_key,
       rule.*,
       coalesce(standing.blocked, false) AS member_blocked,
       earlier.transaction_id AS earlier_transaction_id, earlier.body_hash AS earlier_body_hash
FROM requested
JOIN bucket ON bucket.client_id = requested.client_id
LEFT JOIN LATERAL (
    SELECT status, request_signing_key FROM clients
    WHERE clients.client_id = requested.client_id LIMIT 1
) AS client ON true
LEFT JOIN LATERAL (
    SELECT * FROM rules WHERE rules.rule_id = requested.rule_id LIMIT 1
) AS rule ON true
LEFT JOIN LATERAL (
    SELECT blocked FROM member_standings
    WHERE member_standings.environment = rule.environment
        AND member_standings.org_id = rule.org_id
        AND member_standings.user_id = requested.user_id
    LIMIT 1
) AS standing ON true
LEFT JOIN LATERAL (
    SELECT transaction_id, body_hash FROM requests
    WHERE requests.client_id = requested.client_id AND requests.request_id = requested.request_id
    LIMIT 1
) AS earlier ON true
ORDER BY requested.position
"""  # noqa: S608 - composed of constants

SET_CLIENT_RATE_LIMIT = """
INSERT INTO client_rate_limits (client_id, per_second, burst) VALUES ($1, $2, $3)
ON CONFLICT (client_id) DO UPDATE SET
    per_second = EXCLUDED.per_second, burst = EXCLUDED.burst, updated_at = now()
"""


async def upsert_rule(connection: asyncpg.Connection, rule: RuleSnapshot) -> None:
    """Project a rule; a version older than the one projected changes nothing."""
    await connection.execute(
        UPSERT_RULE,
        rule.rule_id,
        rule.org_id,
        rule.environment,
        rule.name,
        rule.type,
        rule.status,
        rule.api_trigger,
        list(rule.authorized_client_ids),
        rule.cap_max,
        rule.cap_per_member,
        rule.max_amount_per_request,
        rule.starts_at,
        rule.ends_at,
        rule.version,
        rule.points_expire_after_days,
        rule.points_expire_at,
    )


async def upsert_client(
    connection: asyncpg.Connection, client: ClientSnapshot, occurred_at: datetime
) -> None:
    """Project a client; a change older than the one projected changes nothing."""
    await connection.execute(
        UPSERT_CLIENT,
        client.client_id,
        client.org_id,
        client.environment,
        client.status,
        client.request_signing_key,
        occurred_at,
        None if client.rate_limit is None else client.rate_limit.per_second,
        None if client.rate_limit is None else client.rate_limit.burst,
    )


async def upsert_member_standing(connection: asyncpg.Connection, standing: MemberStanding) -> None:
    """Project a member's standing; a change older than the one projected changes nothing."""
    await connection.execute(
        UPSERT_MEMBER_STANDING,
        standing.environment,
        standing.org_id,
        standing.user_id,
        standing.blocked,
        standing.changed_at,
    )


async def client_access(
    connection: asyncpg.Connection | asyncpg.Pool, client_id: str
) -> asyncpg.Record | None:
    """The client's ``status`` and ``request_signing_key``, if it is projected."""
    return await connection.fetchrow(CLIENT_ACCESS, client_id)


async def admit_triggers(
    pool: asyncpg.Pool,
    keys: Sequence[tuple[str, str, str, str | None]],
    *,
    default_per_second: float,
    default_burst: int,
) -> list[asyncpg.Record]:
    """One row per ``(client id, request id, rule id, user id)``, in order: the client,
    its rate-limit verdict, the rule, whether the member is blocked and any earlier
    request under the same id."""
    return list(
        await pool.fetch(
            ADMIT_TRIGGERS, *array_columns(keys, width=4), default_per_second, default_burst
        )
    )


async def record_requests(
    pool: asyncpg.Pool, rows: Sequence[tuple[Any, ...]]
) -> list[asyncpg.Record]:
    """Run ``record_points_requests`` on a batch: its 20 arguments a row each."""
    return list(await pool.fetch(RECORD_REQUESTS, *array_columns(rows, width=20)))


async def get_request(
    connection: asyncpg.Connection | asyncpg.Pool, client_id: str, request_id: str
) -> asyncpg.Record | None:
    return await connection.fetchrow(GET_REQUEST, client_id, request_id)


async def record_results(
    connection: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str | None, int | None]]
) -> list[asyncpg.Record]:
    """Settle ``(client id, request id, status, reason, balance)`` requests still
    pending; each settled one's status, rule, member and reservations."""
    return list(await connection.fetch(RECORD_RESULTS, *array_columns(rows, width=5)))


async def record_reversal(
    connection: asyncpg.Connection,
    client_id: str,
    request_id: str,
    *,
    reversal_id: UUID,
    reversed_amount: int,
    uncovered_amount: int | None,
    reversed_at: datetime,
) -> asyncpg.Record | None:
    """Record a reversal of a succeeded request once; its rule, member and
    reservations, or None when it is not known or already reversed."""
    return await connection.fetchrow(
        RECORD_REVERSAL,
        client_id,
        request_id,
        reversal_id,
        reversed_amount,
        uncovered_amount,
        reversed_at,
    )


async def release_cap(connection: asyncpg.Connection, rule_id: str, amount: int) -> None:
    await connection.execute(RELEASE_CAP, rule_id, amount)


async def release_member_cap(
    connection: asyncpg.Connection, rule_id: str, user_id: str, amount: int
) -> None:
    await connection.execute(RELEASE_MEMBER_CAP, rule_id, user_id, amount)


async def redrive_pending(
    connection: asyncpg.Connection, pending_for_seconds: float, batch_size: int
) -> list[asyncpg.Record]:
    """Mark a batch of overdue pending requests as published again; the requests."""
    return list(await connection.fetch(REDRIVE_PENDING, pending_for_seconds, batch_size))


async def overdue_requests(
    pool: asyncpg.Pool, pending_for_seconds: float
) -> tuple[int, datetime | None]:
    """How many requests are pending longer than that, and since when the oldest."""
    row = await pool.fetchrow(OVERDUE_REQUESTS, pending_for_seconds)
    assert row is not None  # an aggregate always answers one row
    return row["overdue"], row["oldest"]


async def set_client_rate_limit(
    connection: asyncpg.Connection, client_id: str, per_second: float, burst: int
) -> None:
    await connection.execute(SET_CLIENT_RATE_LIMIT, client_id, per_second, burst)
