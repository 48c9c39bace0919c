"""Every SQL statement of the gateway's activity counts (migration 0010)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from infra.db import array_columns

# Additive, and in the rows' (sorted) order, so replicas flushing at the same moment
# lock shared rows in one order.
ADD_ACTIVITY = """
INSERT INTO activity AS counted (org_id, environment, rule_id, bucket, outcome, requests)
SELECT org_id, environment, rule_id, bucket, outcome, requests
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[])
    WITH ORDINALITY AS added (org_id, environment, rule_id, bucket, outcome, requests, position)
ORDER BY position
ON CONFLICT (org_id, environment, rule_id, bucket, outcome) DO UPDATE
SET requests = counted.requests + excluded.requests
"""

# $4 holds the starts of the window's hours or days, ascending (infra.activity).
RULE_ACTIVITY = """
SELECT width_bucket(bucket, $4::timestamptz[]) AS slot, outcome, sum(requests)::bigint AS requests
FROM activity
WHERE org_id = $1 AND environment = $2 AND rule_id = $3 AND bucket >= $5 AND bucket < $6
GROUP BY slot, outcome
"""

ORGANISATION_ACTIVITY = """
SELECT width_bucket(bucket, $3::timestamptz[]) AS slot, outcome, sum(requests)::bigint AS requests
FROM activity
WHERE org_id = $1 AND environment = $2 AND bucket >= $4 AND bucket < $5
GROUP BY slot, outcome
"""

#: A row of :data:`ADD_ACTIVITY`: org, environment, rule ('' for none), bucket, outcome, count.
ActivityRow = tuple[str, str, str, datetime, str, int]


async def add_activity(pool: asyncpg.Pool, rows: Sequence[ActivityRow]) -> None:
    await pool.execute(ADD_ACTIVITY, *array_columns(rows, width=6))


async def rule_activity(
    pool: asyncpg.Pool,
    org_id: str,
    environment: str,
    rule_id: str,
    starts: Sequence[datetime],
    end: datetime,
) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(RULE_ACTIVITY, org_id, environment, rule_id, list(starts), starts[0], end)
    )


async def organisation_activity(
    pool: asyncpg.Pool,
    org_id: str,
    environment: str,
    starts: Sequence[datetime],
    end: datetime,
) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(ORGANISATION_ACTIVITY, org_id, environment, list(starts), starts[0], end)
    )
