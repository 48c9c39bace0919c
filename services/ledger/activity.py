"""What each rule moved over time: the activity rollup, kept as the ledger writes.

Every path that moves points (a batch of requests, an expiry pass, a reversal) adds
what it moved to one row per (organisation, environment, rule, 15-minute bucket,
kind), and to the same per whole hour, in its own transaction: the sums are made
here first, then one upsert per table. Reads regroup those quarter-hours (or
hours, when the window's buckets start on whole hours of UTC) into the hours or
days of any timezone (:mod:`infra.activity`), so a chart over a million entries
reads a few thousand rows rather than the entries.

The rows are locked last in each transaction, after the members and the pools, and
in key order: two partitions applying to one rule queue on its row, as they do on its
pool, and never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

import asyncpg

from infra.activity import ActivityWindow, bucket_of
from services.ledger import activity_repository
from services.ledger.access import ReadScope

Kind = Literal["earned", "redeemed", "reversed", "expired"]
KINDS: tuple[Kind, ...] = ("earned", "redeemed", "reversed", "expired")
#: The kind of activity an applied transaction of each type is.
KIND_OF_TYPE: dict[str, Kind] = {
    "earn": "earned",
    "redeem": "redeemed",
    "reversal": "reversed",
    "expiry": "expired",
}


class Movement(NamedTuple):
    """Points one applied transaction moved for a rule."""

    org_id: str
    environment: str
    rule_id: str
    kind: Kind
    points: int


async def record(
    connection: asyncpg.Connection, movements: Iterable[Movement], at: datetime
) -> None:
    """Add ``movements``, made at ``at``, to the rollup in the caller's transaction: summed
    per rule and kind here, then one upsert of the sums, in key order."""
    bucket = bucket_of(at)
    sums: dict[tuple[str, str, str, Kind], list[int]] = {}
    for movement in movements:
        key = (movement.org_id, movement.environment, movement.rule_id, movement.kind)
        counted = sums.setdefault(key, [0, 0])
        counted[0] += movement.points
        counted[1] += 1
    if not sums:
        return
    rows = [
        (org_id, environment, rule_id, bucket, kind, points, count)
        for (org_id, environment, rule_id, kind), (points, count) in sorted(sums.items())
    ]
    await activity_repository.add_activity(connection, rows)


@dataclass(frozen=True)
class ActivityBucket:
    """Points moved in one hour or day."""

    start: datetime
    earned: int = 0
    redeemed: int = 0
    reversed: int = 0
    expired: int = 0
    transactions: int = 0
    """Applied transactions of any kind in the bucket."""


async def rule_activity(
    connection: asyncpg.Connection, scope: ReadScope, rule_id: str, window: ActivityWindow
) -> list[ActivityBucket]:
    """What ``rule_id`` moved in each bucket of ``window`` (zeros where nothing moved)."""
    rows = await activity_repository.rule_activity(
        connection, scope.org_id, scope.environment, rule_id, window.starts, window.end
    )
    return _buckets(rows, window)


async def organisation_activity(
    connection: asyncpg.Connection, scope: ReadScope, window: ActivityWindow
) -> list[ActivityBucket]:
    """What every rule of the organisation moved in the environment, per bucket."""
    rows = await activity_repository.organisation_activity(
        connection, scope.org_id, scope.environment, window.starts, window.end
    )
    return _buckets(rows, window)


def _buckets(rows: Iterable[asyncpg.Record], window: ActivityWindow) -> list[ActivityBucket]:
    figures: list[dict[str, int]] = [{} for _ in window.starts]
    for row in rows:
        counted = figures[window.index_of(row["slot"])]
        counted[row["kind"]] = int(row["points"])
        counted["transactions"] = counted.get("transactions", 0) + int(row["transactions"])
    return [
        ActivityBucket(start=start, **counted)
        for start, counted in zip(window.starts, figures, strict=True)
    ]
