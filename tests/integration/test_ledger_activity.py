"""The ledger's activity rollup against a real PostgreSQL: what each rule moved per hour
or day, kept as batches, expiries and reversals are applied."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import asyncpg

from infra import db
from infra.activity import activity_window
from infra.runtime import INFRA_MIGRATIONS
from services.ledger.activity import (
    ActivityBucket,
    Movement,
    organisation_activity,
    record,
    rule_activity,
)
from services.ledger.app import MIGRATIONS as LEDGER_MIGRATIONS
from services.ledger.expiry import expire_due_lots
from services.ledger.repository import (
    ReversalRow,
    TransactionRow,
    insert_reversal,
    insert_transactions,
)
from tests.helpers import migrated_pool
from tests.integration.test_ledger_reversals import reverse, verified
from tests.integration.test_ledger_service import STAGING, apply, points_requested


def days(n: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=n)


async def by_day(
    pool: asyncpg.Pool, rule_id: str | None = "rule-earn", *, until: datetime | None = None
) -> ActivityBucket:
    """The rule's (or, for None, the organisation's) figures summed over the last week."""
    window = activity_window(
        start=days(-7), end=until or days(1), granularity="day", timezone="UTC"
    )
    async with pool.acquire() as connection:
        if rule_id is None:
            buckets = await organisation_activity(connection, STAGING, window)
        else:
            buckets = await rule_activity(connection, STAGING, rule_id, window)
    return ActivityBucket(
        start=window.start,
        earned=sum(b.earned for b in buckets),
        redeemed=sum(b.redeemed for b in buckets),
        reversed=sum(b.reversed for b in buckets),
        expired=sum(b.expired for b in buckets),
        transactions=sum(b.transactions for b in buckets),
    )


async def entries_total(pool: asyncpg.Pool, rule_id: str, type: str) -> int:
    """What the ledger's own transactions say the rule moved of one type."""
    return int(
        await pool.fetchval(
            "SELECT coalesce(sum(amount - coalesce(uncovered, 0)), 0) FROM transactions "
            "WHERE rule_id = $1 AND type = $2 AND status = 'applied'",
            rule_id,
            type,
        )
    )


class TestTheRollup:
    async def test_counts_what_a_batch_applied_per_rule(self, pool: asyncpg.Pool) -> None:
        await apply(
            pool,
            points_requested("member-1", amount=100),
            points_requested("member-2", amount=50),
            points_requested("member-1", type="redeem", amount=30, rule_id="rule-shop"),
        )

        earn, shop = await by_day(pool), await by_day(pool, "rule-shop")

        assert (earn.earned, earn.transactions) == (150, 2)
        assert (shop.redeemed, shop.transactions) == (30, 1)
        assert earn.earned == await entries_total(pool, "rule-earn", "earn")

    async def test_leaves_rejected_requests_out(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(type="redeem", amount=30, rule_id="rule-shop"))

        assert (await by_day(pool, "rule-shop")).transactions == 0

    async def test_counts_what_a_reversal_moved_back(self, pool: asyncpg.Pool) -> None:
        earn = points_requested(amount=100)
        await apply(pool, earn, points_requested(type="redeem", amount=60, rule_id="rule-shop"))

        await reverse(pool, earn.data.transaction_id)

        figures = await by_day(pool)
        assert (figures.earned, figures.reversed) == (100, 40)
        assert figures.reversed == await entries_total(pool, "rule-earn", "reversal")

    async def test_counts_what_expired_in_the_bucket_of_the_expiry(
        self, pool: asyncpg.Pool
    ) -> None:
        await apply(pool, points_requested(amount=25, expires_at=days(2)))

        await expire_due_lots(pool, now=days(3))

        assert (await by_day(pool)).expired == 0
        figures = await by_day(pool, until=days(4))
        assert (figures.earned, figures.expired) == (25, 25)
        assert await verified(pool) == []

    async def test_sums_every_rule_of_the_organisation_and_no_other(
        self, pool: asyncpg.Pool
    ) -> None:
        await apply(
            pool,
            points_requested("member-1", amount=100),
            points_requested("member-2", amount=7, rule_id="rule-bonus"),
            points_requested("member-3", amount=1000, org_id="org-2"),
        )

        assert (await by_day(pool, None)).earned == 107

    async def test_takes_two_partitions_applying_to_one_rule_at_once_without_deadlock(
        self, pool: asyncpg.Pool
    ) -> None:
        async def partition(members: range) -> None:
            for _ in range(10):
                # Both rules in each batch, in opposite orders from one partition to the other.
                rules = ["rule-a", "rule-b"] if members.start else ["rule-b", "rule-a"]
                await apply(
                    pool,
                    *(
                        points_requested(f"member-{member}", amount=1, rule_id=rules[i % 2])
                        for i, member in enumerate(members)
                    ),
                )

        await asyncio.gather(*(partition(range(start, start + 20)) for start in (0, 100, 200)))

        a, b = await by_day(pool, "rule-a"), await by_day(pool, "rule-b")
        assert a.earned + b.earned == 3 * 10 * 20
        assert a.earned == await entries_total(pool, "rule-a", "earn")


class TestRegrouping:
    async def add(self, pool: asyncpg.Pool, bucket: datetime, points: int) -> None:
        """Points earned in the quarter-hour ``bucket``, as the ledger records them."""
        async with pool.acquire() as connection, connection.transaction():
            await record(
                connection, [Movement("org-1", "staging", "rule-earn", "earned", points)], bucket
            )

    async def test_gives_the_day_daylight_saving_ends_its_25_hours(
        self, pool: asyncpg.Pool
    ) -> None:
        # New York leaves daylight-saving time at 06:00 UTC on 1 November 2026: that local
        # day runs from 04:00 UTC on the 1st to 05:00 UTC on the 2nd.
        for hour in range(3, 30):
            await self.add(pool, datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=hour), 1)
        window = activity_window(
            start=datetime(2026, 11, 1, 12, tzinfo=UTC),
            end=datetime(2026, 11, 1, 13, tzinfo=UTC),
            granularity="day",
            timezone="America/New_York",
        )
        async with pool.acquire() as connection:
            [day] = await rule_activity(connection, STAGING, "rule-earn", window)

        assert day.start == datetime(2026, 11, 1, 4, tzinfo=UTC)
        assert day.earned == 25

    async def test_keeps_the_hour_that_happens_twice_as_two_hours(self, pool: asyncpg.Pool) -> None:
        await self.add(pool, datetime(2026, 11, 1, 5, 15, tzinfo=UTC), 3)  # 01:15 EDT
        await self.add(pool, datetime(2026, 11, 1, 6, 45, tzinfo=UTC), 4)  # 01:45 EST
        window = activity_window(
            start=datetime(2026, 11, 1, 5, tzinfo=UTC),
            end=datetime(2026, 11, 1, 7, tzinfo=UTC),
            granularity="hour",
            timezone="America/New_York",
        )
        async with pool.acquire() as connection:
            hours = await rule_activity(connection, STAGING, "rule-earn", window)

        assert [(h.start.hour, h.earned) for h in hours] == [(5, 3), (6, 4)]

    async def test_splits_hours_of_a_half_hour_timezone_at_its_own_hours(
        self, pool: asyncpg.Pool
    ) -> None:
        await self.add(pool, datetime(2026, 6, 1, 10, 15, tzinfo=UTC), 1)  # 15:45 in Kolkata
        await self.add(pool, datetime(2026, 6, 1, 10, 30, tzinfo=UTC), 2)  # 16:00 in Kolkata
        window = activity_window(
            start=datetime(2026, 6, 1, 10, tzinfo=UTC),
            end=datetime(2026, 6, 1, 11, tzinfo=UTC),
            granularity="hour",
            timezone="Asia/Kolkata",
        )
        async with pool.acquire() as connection:
            hours = await rule_activity(connection, STAGING, "rule-earn", window)

        assert [(h.start.astimezone(ZoneInfo("Asia/Kolkata")).hour, h.earned) for h in hours] == [
            (15, 1),
            (16, 2),
        ]

    async def test_reads_the_same_from_hours_as_from_quarter_hours(
        self, pool: asyncpg.Pool
    ) -> None:
        await apply(pool, points_requested("member-1", amount=40))
        await apply(
            pool, points_requested("member-1", type="redeem", amount=5, rule_id="rule-earn")
        )
        totals = {}
        for timezone in ("Europe/Berlin", "Asia/Kolkata"):  # whole hours / half an hour
            window = activity_window(
                start=days(-1), end=days(1), granularity="hour", timezone=timezone
            )
            async with pool.acquire() as connection:
                hours = await rule_activity(connection, STAGING, "rule-earn", window)
            totals[timezone] = (sum(h.earned for h in hours), sum(h.redeemed for h in hours))

        assert totals == {"Europe/Berlin": (40, 5), "Asia/Kolkata": (40, 5)}


def transaction_row(type: str, amount: int, created_at: datetime, **fields: Any) -> TransactionRow:
    return TransactionRow(
        id=fields.pop("id", None) or uuid4(),
        environment="staging",
        org_id="org-1",
        user_id="member-1",
        request_id=fields.pop("request_id", f"request-{uuid4().hex[:8]}"),
        client_id="client-1",
        rule_id="rule-earn",
        rule_version=1,
        correlation_id="correlation",
        type=type,
        amount=amount,
        status=fields.pop("status", "applied"),
        reason=fields.pop("reason", None),
        created_at=created_at,
    )


class TestBackfill:
    async def test_counts_what_the_ledger_recorded_before_the_rollup(
        self, database_url: str, tmp_path: Path
    ) -> None:
        for migration in sorted(LEDGER_MIGRATIONS.glob("*.sql")):
            if migration.name < "0008":
                shutil.copy(migration, tmp_path)
        await db.migrate(database_url, "ledger", [INFRA_MIGRATIONS, tmp_path])
        at = datetime(2026, 11, 3, 10, 7, tzinfo=UTC)
        earn = transaction_row("earn", 100, at)
        connection = await db.connect(database_url, "ledger")
        try:
            await insert_transactions(
                connection,
                [
                    earn,
                    transaction_row("earn", 30, at + timedelta(minutes=20)),
                    transaction_row(
                        "redeem", 9, at, status="rejected", reason="INSUFFICIENT_BALANCE"
                    ),
                    transaction_row(
                        "expiry", 30, at + timedelta(days=1), request_id=earn.request_id
                    ),
                ],
            )
            await insert_reversal(
                connection,
                ReversalRow(
                    uuid4(), "staging", "org-1", "member-1", earn.request_id, "client-1",
                    "rule-earn", 1, "correlation", 100, at + timedelta(days=2), earn.id,
                    "refund", "user-1", 25, 0,
                ),
            )  # fmt: skip
        finally:
            await connection.close()

        async with migrated_pool(database_url, "ledger", LEDGER_MIGRATIONS) as pool:
            window = activity_window(
                start=at, end=at + timedelta(days=3), granularity="day", timezone="UTC"
            )
            async with pool.acquire() as reading:
                days_ = await rule_activity(reading, STAGING, "rule-earn", window)
            hours = await pool.fetchval("SELECT sum(points) FROM activity_hours")

        assert [(d.earned, d.expired, d.reversed, d.transactions) for d in days_] == [
            (130, 0, 0, 2),
            (0, 30, 0, 1),
            (0, 0, 75, 1),
            (0, 0, 0, 0),
        ]
        assert hours == 130 + 30 + 75
