"""Every SQL statement of the ledger's activity rollup (migration 0008)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from infra.db import array_columns

# One statement per batch, whatever its size. The rows come sorted by key and are
# inserted in that order (WITH ORDINALITY ... ORDER BY), so two transactions adding to
# the same rows lock them in one order and wait for each other rather than deadlock.
ADD_ACTIVITY = """
INSERT INTO activity AS counted (org_id, environment, rule_id, bucket, kind, points, transactions)
SELECT org_id, environment, rule_id, bucket, kind, points, transactions
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[],
            $7::bigint[]) WITH ORDINALITY
    AS added (org_id, environment, rule_id, bucket, kind, points, transactions, position)
ORDER BY position
ON CONFLICT (org_id, environment, rule_id, bucket, kind) DO UPDATE
SET points = counted.points + excluded.points,
    transactions = counted.transactions + excluded.transactions
"""

# $4 holds the starts of the window's hours or days, ascending; width_bucket says which
# of them each stored quarter-hour falls in (1 for the first).
RULE_ACTIVITY = """
SELECT width_bucket(bucket, $4::timestamptz[]) AS slot, kind,
       sum(points)::bigint AS points, sum(transactions)::bigint AS transactions
FROM activity
WHERE org_id = $1 AND environment = $2 AND rule_id = $3 AND bucket >= $5 AND bucket < $6
GROUP BY slot, kind
"""

ORGANISATION_ACTIVITY = """
SELECT width_bucket(bucket, $3::timestamptz[]) AS slot, kind,
       sum(points)::bigint AS points, sum(transactions)::bigint AS transactions
FROM activity
WHERE org_id = $1 AND environment = $2 AND bucket >= $4 AND bucket < $5
GROUP BY slot, kind
"""

#: A row of :data:`ADD_ACTIVITY`: org, environment, rule, bucket, kind, points, count.
ActivityRow = tuple[str, str, str, datetime, str, int, int]


async def add_activity(connection: asyncpg.Connection, rows: Sequence[ActivityRow]) -> None:
    await connection.execute(ADD_ACTIVITY, *array_columns(rows, width=7))


async def rule_activity(
    connection: asyncpg.Connection,
    org_id: str,
    environment: str,
    rule_id: str,
    starts: Sequence[datetime],
    end: datetime,
) -> list[asyncpg.Record]:
    return list(
        await connection.fetch(
            RULE_ACTIVITY, org_id, environment, rule_id, list(starts), starts[0], end
        )
    )


async def organisation_activity(
    connection: asyncpg.Connection,
    org_id: str,
    environment: str,
    starts: Sequence[datetime],
    end: datetime,
) -> list[asyncpg.Record]:
    return list(
        await connection.fetch(
            ORGANISATION_ACTIVITY, org_id, environment, list(starts), starts[0], end
        )
    )
