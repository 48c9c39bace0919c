"""Points that expire (lots), the expiry process and blocked members, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid5

import asyncpg
from structlog.testing import capture_logs

from contracts import MemberLifecycleEvent, MemberStanding, PointsResultEvent
from services.ledger.applying import INSUFFICIENT_BALANCE, MEMBER_BLOCKED
from services.ledger.expiry import expire_due_lots
from services.ledger.members import project_members
from services.ledger.reads import member_expiring, member_history, rule_totals
from tests.integration.test_ledger_reversals import reverse, verified
from tests.integration.test_ledger_service import (
    STAGING,
    apply,
    balance,
    count,
    points_requested,
    pool_balance,
)

NOW = datetime.now(UTC)
#: The namespace expiry ids were once derived from (uuid5 of the lot id), which let
#: anyone who could choose a transaction id take an expiry's id before it was written.
PREDICTABLE_EXPIRY_IDS = UUID("0c7a2f6e-58d1-4b57-8f0e-6a3c2d9e4b17")


def days(n: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=n)


async def earn(
    pool: asyncpg.Pool,
    amount: int,
    expires_at: datetime | None = None,
    *,
    user_id: str = "member-1",
    rule_id: str = "rule-earn",
) -> UUID:
    event = points_requested(user_id, amount=amount, expires_at=expires_at, rule_id=rule_id)
    [result] = await apply(pool, event)
    assert result.data.status == "applied"
    return event.data.transaction_id


async def redeem(pool: asyncpg.Pool, amount: int, user_id: str = "member-1") -> PointsResultEvent:
    event = points_requested(user_id, type="redeem", amount=amount, rule_id="rule-shop")
    [result] = await apply(pool, event)
    return result


async def remaining(pool: asyncpg.Pool, lot: UUID) -> int:
    return int(await pool.fetchval("SELECT remaining FROM lots WHERE id = $1", lot))


async def expired_by(pool: asyncpg.Pool, lot: UUID) -> UUID | None:
    return await pool.fetchval("SELECT expired_by FROM lots WHERE id = $1", lot)


async def refuse_to_expire(pool: asyncpg.Pool, lot: UUID) -> None:
    """Make the database refuse to mark ``lot`` expired, as a fault only it has would."""
    await pool.execute(
        """
        CREATE FUNCTION refuse_expiry() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'lot % refused by the test', OLD.id;
        END;
        $$
        """
    )
    await pool.execute(
        f"""
        CREATE TRIGGER refuse_expiry BEFORE UPDATE ON lots FOR EACH ROW
        WHEN (OLD.id = '{lot}' AND NEW.expired_by IS NOT NULL)
        EXECUTE FUNCTION refuse_expiry()
        """
    )


async def expiring(pool: asyncpg.Pool, user_id: str = "member-1") -> list[tuple[datetime, int]]:
    async with pool.acquire() as connection:
        return await member_expiring(connection, STAGING, user_id)


async def expired_results(pool: asyncpg.Pool) -> list[PointsResultEvent]:
    rows = await pool.fetch("SELECT payload FROM outbox ORDER BY id")
    results = [PointsResultEvent.model_validate_json(row["payload"]) for row in rows]
    return [result for result in results if result.type == "points.expired"]


class TestRedeemingPointsThatExpire:
    async def test_takes_the_soonest_expiring_lots_first_and_points_without_expiry_last(
        self, pool: asyncpg.Pool
    ) -> None:
        await earn(pool, 50)
        later = await earn(pool, 30, days(10))
        sooner = await earn(pool, 20, days(5))

        result = await redeem(pool, 40)

        assert (result.data.status, result.data.balance) == ("applied", 60)
        assert (await remaining(pool, sooner), await remaining(pool, later)) == (0, 10)
        assert [amount for _, amount in await expiring(pool)] == [10]
        assert await verified(pool) == []

    async def test_cannot_spend_points_whose_expiry_passed(self, pool: asyncpg.Pool) -> None:
        await earn(pool, 30, days(-1))
        await earn(pool, 10)

        refused = await redeem(pool, 11)
        spent = await redeem(pool, 10)

        assert (refused.data.status, refused.data.reason) == ("rejected", INSUFFICIENT_BALANCE)
        assert (spent.data.status, spent.data.balance) == ("applied", 30)
        assert await verified(pool) == []

    async def test_in_the_same_batch_as_the_earn_uses_its_lot(self, pool: asyncpg.Pool) -> None:
        award = points_requested(amount=25, expires_at=days(3), rule_id="rule-earn")
        spend = points_requested(type="redeem", amount=5, rule_id="rule-shop")

        await apply(pool, award, spend)

        assert await remaining(pool, award.data.transaction_id) == 20
        assert await verified(pool) == []


class TestReversals:
    async def test_of_an_earn_takes_back_from_its_own_lot_first(self, pool: asyncpg.Pool) -> None:
        sooner = await earn(pool, 30, days(5))
        own = await earn(pool, 40, days(10))

        outcome = await reverse(pool, own)

        assert (outcome.reversed, outcome.balance) == (40, 30)
        assert (await remaining(pool, own), await remaining(pool, sooner)) == (0, 30)
        assert await verified(pool) == []

    async def test_of_a_redeem_gives_back_into_open_lots_but_not_expired_ones(
        self, pool: asyncpg.Pool
    ) -> None:
        soon = await earn(pool, 30, datetime.now(UTC) + timedelta(seconds=1))
        later = await earn(pool, 20, days(10))
        spent = points_requested(type="redeem", amount=40, rule_id="rule-shop")
        await apply(pool, spent)
        await asyncio.sleep(1.2)  # the first lot's expiry passes
        await expire_due_lots(pool)

        outcome = await reverse(pool, spent.data.transaction_id)

        assert (outcome.reversed, outcome.uncovered, outcome.balance) == (10, 30, 20)
        assert (await remaining(pool, soon), await remaining(pool, later)) == (0, 20)
        assert await verified(pool) == []

    async def test_of_an_earn_whose_lot_expired_counts_the_expired_points_uncovered(
        self, pool: asyncpg.Pool
    ) -> None:
        lot = await earn(pool, 40, days(2))
        await earn(pool, 100)
        await expire_due_lots(pool, now=days(3))

        outcome = await reverse(pool, lot)

        assert (outcome.reversed, outcome.uncovered, outcome.balance) == (0, 40, 100)
        assert await balance(pool) == 100
        assert await verified(pool) == []

    async def test_of_an_earn_partly_spent_before_its_lot_expired_takes_back_only_the_spent_part(
        self, pool: asyncpg.Pool
    ) -> None:
        lot = await earn(pool, 100, days(2))
        await earn(pool, 50)
        await redeem(pool, 30)  # from the lot, which then expires with 70 left
        await expire_due_lots(pool, now=days(3))

        outcome = await reverse(pool, lot)

        assert (outcome.reversed, outcome.uncovered, outcome.balance) == (30, 70, 20)
        assert await balance(pool) == 20
        assert await pool_balance(pool, "rule-earn") == -50
        async with pool.acquire() as connection:
            totals = await rule_totals(connection, STAGING, "rule-earn")
        assert (totals.earned, totals.expired, totals.reversed_earned, totals.net) == (
            150,
            70,
            30,
            50,
        )
        assert await verified(pool) == []

    async def test_of_an_earn_whose_lot_is_due_ends_as_if_the_expiry_process_had_run_first(
        self, pool: asyncpg.Pool
    ) -> None:
        lot = await earn(pool, 100, datetime.now(UTC) + timedelta(seconds=1))
        await earn(pool, 50)
        await redeem(pool, 30)  # from the lot, which is then due with 70 left
        await asyncio.sleep(1.2)

        outcome = await reverse(pool, lot)
        await expire_due_lots(pool, now=datetime.now(UTC))

        # The same as when the process ran before the reversal: the 70 expire once.
        assert (outcome.reversed, outcome.uncovered) == (30, 70)
        assert await balance(pool) == 20
        assert await pool_balance(pool, "rule-earn") == -50
        async with pool.acquire() as connection:
            totals = await rule_totals(connection, STAGING, "rule-earn")
        assert (totals.expired, totals.reversed_earned, totals.net) == (70, 30, 50)
        assert await verified(pool) == []

    async def test_of_an_earn_never_takes_another_rules_points_that_are_due(
        self, pool: asyncpg.Pool
    ) -> None:
        due = await earn(pool, 50, days(-1), rule_id="rule-other")
        own = await earn(pool, 100, days(10))
        await redeem(pool, 90)  # from its own lot: the due one cannot be spent

        outcome = await reverse(pool, own)
        await expire_due_lots(pool, now=datetime.now(UTC))

        # The member covers only the 10 left of the earn; the due 50 expire to their rule.
        assert (outcome.reversed, outcome.uncovered) == (10, 90)
        assert (await remaining(pool, due), await expired_by(pool, due) is not None) == (0, True)
        assert await balance(pool) == 0
        assert await pool_balance(pool, "rule-other") == 0
        async with pool.acquire() as connection:
            other = await rule_totals(connection, STAGING, "rule-other")
        assert (other.earned, other.expired, other.net) == (50, 50, 0)
        assert await verified(pool) == []

    async def test_of_a_redeem_counts_in_the_rules_totals_only_what_it_gave_back(
        self, pool: asyncpg.Pool
    ) -> None:
        await earn(pool, 30, datetime.now(UTC) + timedelta(seconds=1))
        await earn(pool, 20)
        spent = points_requested(type="redeem", amount=40, rule_id="rule-shop")
        await apply(pool, spent)
        await asyncio.sleep(1.2)  # the lot's expiry passes

        outcome = await reverse(pool, spent.data.transaction_id)

        async with pool.acquire() as connection:
            totals = await rule_totals(connection, STAGING, "rule-shop")
        assert (outcome.reversed, outcome.uncovered) == (10, 30)
        assert (totals.redeemed, totals.reversed_redeemed, totals.uncovered) == (40, 10, 30)
        assert totals.net == -await pool_balance(pool, "rule-shop") == -30


class TestTheExpiryProcess:
    async def test_moves_what_is_left_of_a_due_lot_back_to_the_rules_pool(
        self, pool: asyncpg.Pool
    ) -> None:
        lot = await earn(pool, 30, days(2))
        await earn(pool, 5)
        await redeem(pool, 10)
        due_by = days(3)

        report = await expire_due_lots(pool, now=due_by)

        assert (report.lots, report.points) == (1, 20)
        assert await balance(pool) == 5
        assert await pool_balance(pool, "rule-earn") == -15
        [result] = await expired_results(pool)
        assert result.data.transaction_id == lot
        assert (result.data.status, result.data.expired_amount, result.data.balance) == (
            "expired",
            20,
            5,
        )
        assert result.data.expiry_id == await expired_by(pool, lot)
        assert (result.data.amount, result.data.callback_url) == (30, None)
        assert await verified(pool) == []

    async def test_shows_in_history_and_in_the_rules_totals(self, pool: asyncpg.Pool) -> None:
        await earn(pool, 30, days(-1))

        await expire_due_lots(pool)

        async with pool.acquire() as connection:
            page = await member_history(connection, STAGING, "member-1", limit=10)
            totals = await rule_totals(connection, STAGING, "rule-earn")
        assert [(item.type, item.amount) for item in page.items] == [("expiry", 30), ("earn", 30)]
        assert (totals.earned, totals.expired, totals.net) == (30, 30, 0)

    async def test_leaves_lots_not_yet_due(self, pool: asyncpg.Pool) -> None:
        await earn(pool, 30, days(1))

        report = await expire_due_lots(pool)

        assert report.lots == 0
        assert await balance(pool) == 30

    async def test_run_twice_at_once_expires_each_lot_once(self, pool: asyncpg.Pool) -> None:
        for member in range(20):
            events = [
                points_requested(
                    f"member-{member}",
                    amount=10,
                    expires_at=days(-1 - n / 100),
                    rule_id="rule-earn",
                )
                for n in range(15)
            ]
            await apply(pool, *events)

        reports = await asyncio.gather(
            expire_due_lots(pool, chunk=40), expire_due_lots(pool, chunk=40)
        )

        assert sum(report.lots for report in reports) == 300
        assert await count(pool, "transactions WHERE type = 'expiry'") == 300
        assert len(await expired_results(pool)) == 300
        assert await pool_balance(pool, "rule-earn") == 0
        assert await verified(pool) == []

    async def test_an_id_chosen_elsewhere_beforehand_cannot_stop_a_lot_expiring(
        self, pool: asyncpg.Pool
    ) -> None:
        lot = await earn(pool, 30, days(-1))
        other = await earn(pool, 5, user_id="member-2")
        # The id the ledger used to derive from the lot, taken by a reversal's chosen id.
        await reverse(pool, other, reversal_id=uuid5(PREDICTABLE_EXPIRY_IDS, str(lot)))

        report = await expire_due_lots(pool)

        assert (report.lots, report.failed) == (1, 0)
        assert await balance(pool) == 0
        assert await verified(pool) == []

    async def test_a_lot_that_cannot_expire_is_reported_and_every_other_lot_expires(
        self, pool: asyncpg.Pool
    ) -> None:
        bad = await earn(pool, 7, days(-2), user_id="member-0")
        for n in range(1, 6):
            await earn(pool, 10, days(-1 - n / 100), user_id=f"member-{n}")
        await refuse_to_expire(pool, bad)

        with capture_logs() as logs:
            first = await expire_due_lots(pool, chunk=2)
            again = await expire_due_lots(pool, chunk=2)

        assert (first.lots, first.points, first.failed) == (5, 50, 1)
        assert (again.lots, again.failed) == (0, 1)
        assert [await balance(pool, f"member-{n}") for n in range(6)] == [7, 0, 0, 0, 0, 0]
        assert await remaining(pool, bad) == 7
        failed = [log for log in logs if log["event"] == "points.expiry.lot_failed"]
        assert [log["lot_id"] for log in failed] == [str(bad), str(bad)]
        assert len(await expired_results(pool)) == 5
        assert await verified(pool) == []

    async def test_an_expiry_does_not_make_the_earns_request_look_reused(
        self, pool: asyncpg.Pool
    ) -> None:
        award = points_requested(amount=30, expires_at=days(-1), rule_id="rule-earn")
        await apply(pool, award)
        await expire_due_lots(pool)

        [again] = await apply(pool, award.model_copy(update={"event_id": UUID(int=7)}))

        assert (again.data.status, again.data.reason) == ("applied", None)


class TestBalanceExpiring:
    async def test_lists_the_next_five_instants_soonest_first_including_due_ones(
        self, pool: asyncpg.Pool
    ) -> None:
        instants = [days(n).replace(microsecond=0) for n in (-1, 2, 3, 4, 5, 6)]
        for at in instants:
            await earn(pool, 10, at)
        await earn(pool, 5, instants[1])
        await earn(pool, 100)

        listed = await expiring(pool)

        assert listed == [
            (instants[0], 10),
            (instants[1], 15),
            (instants[2], 10),
            (instants[3], 10),
            (instants[4], 10),
        ]


def standing(
    blocked: bool, changed_at: datetime, user_id: str = "member-1"
) -> MemberLifecycleEvent:
    return MemberLifecycleEvent.new_event(
        data=MemberStanding(
            org_id="org-1",
            environment="staging",
            user_id=user_id,
            blocked=blocked,
            changed_by="user-1",
            changed_at=changed_at,
        ),
        environment="staging",
        org_id="org-1",
        correlation_id="correlation-1",
    )


async def project(pool: asyncpg.Pool, *events: MemberLifecycleEvent) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await project_members(connection, list(events))


class TestBlockedMembers:
    async def test_earns_and_redeems_are_rejected_and_apply_again_once_unblocked(
        self, pool: asyncpg.Pool
    ) -> None:
        await earn(pool, 50)
        await project(pool, standing(True, NOW))

        refused = await apply(
            pool,
            points_requested(amount=10, rule_id="rule-earn"),
            points_requested(type="redeem", amount=10, rule_id="rule-shop"),
        )
        others = await apply(pool, points_requested("member-2", amount=10, rule_id="rule-earn"))
        await project(pool, standing(False, NOW + timedelta(minutes=1)))
        applied = await redeem(pool, 10)

        assert [(r.data.status, r.data.reason, r.data.balance) for r in refused] == [
            ("rejected", MEMBER_BLOCKED, 50),
            ("rejected", MEMBER_BLOCKED, 50),
        ]
        assert others[0].data.status == "applied"
        assert (applied.data.status, applied.data.balance) == ("applied", 40)
        assert await verified(pool) == []

    async def test_a_member_never_seen_can_be_blocked(self, pool: asyncpg.Pool) -> None:
        await project(pool, standing(True, NOW, user_id="member-9"))

        [result] = await apply(pool, points_requested("member-9", amount=10))

        assert result.data.reason == MEMBER_BLOCKED
        assert await balance(pool, "member-9") == 0

    async def test_an_older_block_replayed_after_a_newer_unblock_changes_nothing(
        self, pool: asyncpg.Pool
    ) -> None:
        block, unblock = standing(True, NOW), standing(False, NOW + timedelta(minutes=1))
        await project(pool, block, unblock)

        await project(pool, block)
        [result] = await apply(pool, points_requested(amount=10))

        assert result.data.status == "applied"
