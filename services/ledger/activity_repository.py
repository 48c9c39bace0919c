"""Every SQL statement of the ledger's activity rollups (migration 0008): per quarter-hour
and per hour of UTC."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from infra.db import array_columns

# One statement per table and batch, whatever its size: the quarter-hours, then the
# hours. The rows come sorted by key and are inserted in that order (WITH ORDINALITY ...
# ORDER BY), so two transactions adding to the same rows lock them in one order and
# wait for each other rather than deadlock.
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

ADD_ACTIVITY_HOURS = """
INSERT INTO activity_hours AS counted
    (org_id, environment, rule_id, hour, kind, points, transactions)
SELECT org_id, environment, rule_id, date_bin('1 hour', bucket, timestamptz 'epoch'), kind,
       points, transactions
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[],
            $7::bigint[]) WITH ORDINALITY
    AS added (org_id, environment, rule_id, bucket, kind, points, transactions, position)
ORDER BY position
ON CONFLICT (org_id, environment, rule_id, hour, kind) DO UPDATE
SET points = counted.points + excluded.points,
    transactions = counted.transactions + excluded.transactions
"""

# $4 holds the starts of the window's hours or days, ascending; width_bucket says which
# of them each stored quarter-hour (or hour) falls in (1 for the first).
_RULE_ACTIVITY = """
SELECT width_bucket({at}, $4::timestamptz[]) AS slot, kind,
       sum(points)::bigint AS points, sum(transactions)::bigint AS transactions
FROM {table}
WHERE org_id = $1 AND environment = $2 AND rule_id = $3 AND {at} >= $5 AND {at} < $6
GROUP BY slot, kind
"""

_ORGANISATION_ACTIVITY = """
SELECT width_bucket({at}, $3::timestamptz[]) AS slot, kind,
       sum(points)::bigint AS points, sum(transactions)::bigint AS transactions
FROM {table}
WHERE org_id = $1 AND environment = $2 AND {at} >= $4 AND {at} < $5
GROUP BY slot, kind
"""

RULE_ACTIVITY = _RULE_ACTIVITY.format(table="activity", at="bucket")
RULE_ACTIVITY_BY_HOURS = _RULE_ACTIVITY.format(table="activity_hours", at="hour")
ORGANISATION_ACTIVITY = _ORGANISATION_ACTIVITY.format(table="activity", at="bucket")
ORGANISATION_ACTIVITY_BY_HOURS = _ORGANISATION_ACTIVITY.format(table="activity_hours", at="hour")

#: A row of :data:`ADD_ACTIVITY`: org, environment, rule, bucket, kind, points, count.
ActivityRow = tuple[str, str, str, datetime, str, int, int]


async def add_activity(connection: asyncpg.Connection, rows: Sequence[ActivityRow]) -> None:
    """Add ``rows`` (sorted) to the quarter-hours, then to their hours."""
    columns = array_columns(rows, width=7)
    await connection.execute(ADD_ACTIVITY, *columns)
    await connection.execute(ADD_ACTIVITY_HOURS, *columns)


def _on_whole_hours(starts: Sequence[datetime], end: datetime) -> bool:
    """Whether every bucket starts and ends on a whole hour of UTC: then the hourly rollup
    answers it."""
    return all(instant.minute == 0 for instant in (*starts, end))


async def rule_activity(
    connection: asyncpg.Connection,
    org_id: str,
    environment: str,
    rule_id: str,
    starts: Sequence[datetime],
    end: datetime,
) -> list[asyncpg.Record]:
    statement = RULE_ACTIVITY_BY_HOURS if _on_whole_hours(starts, end) else RULE_ACTIVITY
    return list(
        await connection.fetch(
            statement, org_id, environment, rule_id, list(starts), starts[0], end
        )
    )


async def organisation_activity(
    connection: asyncpg.Connection,
    org_id: str,
    environment: str,
    starts: Sequence[datetime],
    end: datetime,
) -> list[asyncpg.Record]:
    statement = (
        ORGANISATION_ACTIVITY_BY_HOURS if _on_whole_hours(starts, end) else ORGANISATION_ACTIVITY
    )
    return list(
        await connection.fetch(statement, org_id, environment, list(starts), starts[0], end)
    )
