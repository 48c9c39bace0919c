"""Reversals and per-rule totals against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from uuid import UUID, uuid4

import asyncpg
import pytest

from contracts import PointsRequestedEvent
from services.ledger.reads import member_history, rule_totals
from services.ledger.reversals import (
    NotReversible,
    ReversalIdInUse,
    ReversalOutcome,
    TransactionNotFound,
    reverse_transaction,
)
from services.ledger.verification import verify_ledger
from tests.helpers import eventually
from tests.integration.test_ledger_service import (
    STAGING,
    apply,
    balance,
    count,
    outbox_results,
    points_requested,
    pool_balance,
)


async def reverse(
    pool: asyncpg.Pool,
    transaction_id: UUID,
    *,
    reversal_id: UUID | None = None,
    org_id: str = "org-1",
) -> ReversalOutcome:
    async with pool.acquire() as connection, connection.transaction():
        return await reverse_transaction(
            connection,
            environment="staging",
            org_id=org_id,
            transaction_id=transaction_id,
            reversal_id=reversal_id or uuid4(),
            reason="refunded order 42",
            actor="user-1",
        )


async def earned(pool: asyncpg.Pool, amount: int, rule_id: str = "rule-earn") -> UUID:
    event = points_requested(amount=amount, rule_id=rule_id)
    await apply(pool, event)
    return event.data.transaction_id


async def verified(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as connection:
        return await verify_ledger(connection)


class TestReversingAnEarn:
    async def test_takes_the_points_back_to_the_rules_pool(self, pool: asyncpg.Pool) -> None:
        earn = await earned(pool, 100)

        outcome = await reverse(pool, earn)

        assert (outcome.reversed, outcome.uncovered, outcome.balance) == (100, 0, 0)
        assert (outcome.type, outcome.amount, outcome.transaction_id) == ("earn", 100, earn)
        assert await balance(pool) == 0
        assert await pool_balance(pool, "rule-earn") == 0
        assert await verified(pool) == []

    async def test_takes_back_only_what_the_member_still_has(self, pool: asyncpg.Pool) -> None:
        earn = await earned(pool, 100)
        await apply(pool, points_requested(type="redeem", amount=70, rule_id="rule-shop"))

        outcome = await reverse(pool, earn)

        assert (outcome.reversed, outcome.uncovered, outcome.balance) == (30, 70, 0)
        assert await balance(pool) == 0
        assert await pool_balance(pool, "rule-earn") == -70
        assert await verified(pool) == []

    async def test_of_points_all_spent_is_recorded_and_moves_nothing(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = await earned(pool, 40)
        await apply(pool, points_requested(type="redeem", amount=40))
        entries_before = await count(pool, "entries")

        outcome = await reverse(pool, earn)

        assert (outcome.reversed, outcome.uncovered) == (0, 40)
        assert await count(pool, "entries") == entries_before
        assert await verified(pool) == []


class TestReversingARedeem:
    async def test_gives_the_member_the_points_back(self, pool: asyncpg.Pool) -> None:
        await earned(pool, 50)
        redeem = points_requested(type="redeem", amount=20, rule_id="rule-shop")
        await apply(pool, redeem)

        outcome = await reverse(pool, redeem.data.transaction_id)

        assert (outcome.reversed, outcome.uncovered, outcome.balance) == (20, 0, 50)
        assert await balance(pool) == 50
        assert await pool_balance(pool, "rule-shop") == 0
        assert await verified(pool) == []


class TestReversalIdempotency:
    async def test_the_same_reversal_id_again_returns_the_first_outcome(
        self, pool: asyncpg.Pool
    ) -> None:
        earn, reversal_id = await earned(pool, 100), uuid4()
        first = await reverse(pool, earn, reversal_id=reversal_id)

        again = await reverse(pool, earn, reversal_id=reversal_id)

        assert again.replayed
        assert replace(again, replayed=False) == first
        assert await balance(pool) == 0

    async def test_another_reversal_id_returns_the_first_outcome_and_changes_nothing(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = await earned(pool, 100)
        first = await reverse(pool, earn)
        await earned(pool, 100, rule_id="rule-other")
        entries_before = await count(pool, "entries")

        again = await reverse(pool, earn)

        assert replace(again, replayed=False) == first
        assert await balance(pool) == 100
        assert await count(pool, "entries") == entries_before

    async def test_concurrent_reversals_of_one_transaction_reverse_it_once(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = await earned(pool, 100)
        await earned(pool, 100, rule_id="rule-other")

        outcomes = await asyncio.gather(*(reverse(pool, earn) for _ in range(5)))

        assert len({outcome.reversal_id for outcome in outcomes}) == 1
        assert sum(not outcome.replayed for outcome in outcomes) == 1
        assert await balance(pool) == 100
        assert await verified(pool) == []

    async def test_a_reversal_id_naming_another_transaction_is_refused(
        self, pool: asyncpg.Pool
    ) -> None:
        first, second = await earned(pool, 10), await earned(pool, 20)
        used = (await reverse(pool, first)).reversal_id

        with pytest.raises(ReversalIdInUse):
            await reverse(pool, second, reversal_id=used)
        assert await balance(pool) == 20

    async def test_one_reversal_id_for_two_transactions_at_once_is_refused_not_a_crash(
        self, pool: asyncpg.Pool
    ) -> None:
        # Different members and rules: neither reversal waits for the other's account
        # locks, so both pass the check for the id before either has committed.
        first_event = points_requested("member-a", amount=10, rule_id="rule-a")
        second_event = points_requested("member-b", amount=20, rule_id="rule-b")
        await apply(pool, first_event)
        await apply(pool, second_event)
        shared = uuid4()

        async with pool.acquire() as connection:
            first = connection.transaction()
            await first.start()
            await reverse_transaction(
                connection,
                environment="staging",
                org_id="org-1",
                transaction_id=first_event.data.transaction_id,
                reversal_id=shared,
                reason="refunded",
                actor="user-1",
            )
            second = asyncio.create_task(
                reverse(pool, second_event.data.transaction_id, reversal_id=shared)
            )

            async def second_waits_for_the_first() -> bool:
                waiting = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return waiting > 0

            await eventually(second_waits_for_the_first, what="the second reversal to wait")
            await first.commit()

        with pytest.raises(ReversalIdInUse):
            await second
        assert await balance(pool, "member-b") == 20
        assert await verified(pool) == []


class TestReversalEvent:
    async def test_a_reversal_publishes_what_it_moved_back_after_the_applied_result(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = points_requested(amount=100)
        await apply(pool, earn)
        await apply(pool, points_requested(type="redeem", amount=70, rule_id="rule-shop"))

        outcome = await reverse(pool, earn.data.transaction_id)

        applied, _, reversed_ = await outbox_results(pool)
        assert reversed_.type == "points.reversed"
        assert reversed_.key() == applied.key()
        data = reversed_.data
        assert (data.request_id, data.transaction_id, data.rule_id, data.type) == (
            earn.data.request_id,
            earn.data.transaction_id,
            "rule-earn",
            "earn",
        )
        assert (data.reversal_id, data.amount, data.reversed_amount, data.uncovered_amount) == (
            outcome.reversal_id,
            100,
            30,
            70,
        )
        assert data.balance == 0
        assert data.callback_url is None

    async def test_a_repeated_reversal_publishes_nothing_more(self, pool: asyncpg.Pool) -> None:
        earn = await earned(pool, 100)
        await reverse(pool, earn)

        await reverse(pool, earn)

        assert [event.type for event in await outbox_results(pool)] == [
            "points.applied",
            "points.reversed",
        ]

    async def test_a_refused_reversal_publishes_nothing(self, pool: asyncpg.Pool) -> None:
        redeem = points_requested(type="redeem", amount=5)
        await apply(pool, redeem)

        with pytest.raises(NotReversible):
            await reverse(pool, redeem.data.transaction_id)

        assert [event.type for event in await outbox_results(pool)] == ["points.rejected"]


class TestWhatCannotBeReversed:
    async def test_a_rejected_transaction(self, pool: asyncpg.Pool) -> None:
        redeem = points_requested(type="redeem", amount=5)
        await apply(pool, redeem)

        with pytest.raises(NotReversible) as raised:
            await reverse(pool, redeem.data.transaction_id)
        assert raised.value.code == "REJECTED_NOT_REVERSIBLE"

    async def test_a_reversal(self, pool: asyncpg.Pool) -> None:
        reversal = await reverse(pool, await earned(pool, 10))

        with pytest.raises(NotReversible) as raised:
            await reverse(pool, reversal.reversal_id)
        assert raised.value.code == "REVERSAL_NOT_REVERSIBLE"

    async def test_another_organisations_or_an_unknown_transaction(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = await earned(pool, 10)

        with pytest.raises(TransactionNotFound):
            await reverse(pool, earn, org_id="org-2")
        with pytest.raises(TransactionNotFound):
            await reverse(pool, uuid4())
        assert await balance(pool) == 10

    async def test_the_database_refuses_a_reversal_of_a_reversal_written_by_hand(
        self, pool: asyncpg.Pool
    ) -> None:
        reversal = await reverse(pool, await earned(pool, 10))

        with pytest.raises(asyncpg.CheckViolationError, match="cannot be reversed"):
            await pool.execute(
                "INSERT INTO transactions (id, environment, org_id, user_id, request_id,"
                " client_id, rule_id, rule_version, correlation_id, type, amount, status,"
                " reverses, reversal_reason, reversed_by, uncovered, balance_after)"
                " VALUES ($1, 'staging', 'org-1', 'member-1', 'r', 'c', 'rule-earn', 1, 'x',"
                " 'reversal', 10, 'applied', $2, 'why', 'me', 0, 0)",
                uuid4(),
                reversal.reversal_id,
            )


class TestReversalsInHistoryAndVerification:
    async def test_a_reversal_shows_in_the_members_history(self, pool: asyncpg.Pool) -> None:
        earn = points_requested(amount=10)
        await apply(pool, earn)
        await reverse(pool, earn.data.transaction_id)

        async with pool.acquire() as connection:
            page = await member_history(connection, STAGING, "member-1", limit=10)

        assert [(item.type, item.request_id) for item in page.items] == [
            ("reversal", earn.data.request_id),
            ("earn", earn.data.request_id),
        ]

    async def test_a_request_reversed_and_redelivered_is_not_applied_again(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = points_requested(amount=10)
        await apply(pool, earn)
        await reverse(pool, earn.data.transaction_id)

        republished: PointsRequestedEvent = earn.model_copy(update={"event_id": uuid4()})
        await apply(pool, republished)
        assert await balance(pool) == 0

    async def test_reports_a_reversal_that_does_not_mirror_its_original(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = await earned(pool, 10)
        await earned(pool, 10)
        # A faulty writer: a "reversal" that moves 3 points instead of 10.
        async with pool.acquire() as connection, connection.transaction():
            reversal_id = uuid4()
            await connection.execute(
                "INSERT INTO transactions (id, environment, org_id, user_id, request_id,"
                " client_id, rule_id, rule_version, correlation_id, type, amount, status,"
                " reverses, reversal_reason, reversed_by, uncovered, balance_after)"
                " SELECT $1, environment, org_id, user_id, request_id, client_id, rule_id,"
                " rule_version, 'x', 'reversal', amount, 'applied', id, 'why', 'me', 0, 17"
                " FROM transactions WHERE id = $2",
                reversal_id,
                earn,
            )
            await connection.execute(
                "INSERT INTO entries (transaction_id, account_id, amount)"
                " SELECT $1, id, CASE kind WHEN 'member' THEN -3 ELSE 3 END FROM accounts",
                reversal_id,
            )
            await connection.execute(
                "UPDATE accounts SET balance = balance + CASE kind WHEN 'member' THEN -3 ELSE 3 END"
            )

        assert await verified(pool) == [
            f"Reversal {reversal_id} does not move back the entries of transaction {earn}."
        ]


class TestRuleTotals:
    async def test_sums_what_the_rule_moved_and_what_was_reversed(self, pool: asyncpg.Pool) -> None:
        first = await earned(pool, 100, rule_id="rule-x")
        await earned(pool, 50, rule_id="rule-x")
        await apply(pool, points_requested(type="redeem", amount=120, rule_id="rule-shop"))
        await apply(pool, points_requested(type="redeem", amount=500, rule_id="rule-x"))
        await reverse(pool, first)  # the member has 30 left: 30 back, 70 uncovered
        await earned(pool, 999, rule_id="rule-elsewhere")

        async with pool.acquire() as connection:
            totals = await rule_totals(connection, STAGING, "rule-x")

        assert (totals.earned, totals.redeemed) == (150, 0)
        assert (totals.reversed_earned, totals.reversed_redeemed, totals.uncovered) == (30, 0, 70)
        assert totals.net == 120 == -(await pool_balance(pool, "rule-x"))
        assert (totals.transactions, totals.rejected) == (4, 1)

    async def test_a_rule_never_seen_has_zero_totals(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as connection:
            totals = await rule_totals(connection, STAGING, "rule-unknown")

        assert (totals.earned, totals.net, totals.transactions) == (0, 0, 0)


class TestReversalsAlongsideBatches:
    async def test_reversals_and_batches_of_one_busy_rule_neither_deadlock_nor_lose_points(
        self, pool: asyncpg.Pool
    ) -> None:
        """Batches lock members, then the rule's pool only to update its balance;
        reversals take the same order, so running together they wait, never deadlock."""
        members = [f"member-{n}" for n in range(1, 7)]
        earns = [points_requested(member, amount=50, rule_id="rule-busy") for member in members]
        await apply(pool, *earns)
        shuffler = random.Random(11)  # a fixed seed: the same interleaving on every run
        batches = [
            [
                points_requested(member, amount=10, rule_id="rule-busy")
                for member in shuffler.sample(members, len(members))
            ]
            for _ in range(6)
        ]

        await asyncio.wait_for(
            asyncio.gather(
                *(apply(pool, *batch) for batch in batches),
                *(reverse(pool, earn.data.transaction_id) for earn in earns),
            ),
            30,
        )

        # Each member earned 50, reversed whole (the member never had less), and
        # six times 10 more.
        assert await verified(pool) == []
        assert [await balance(pool, member) for member in members] == [60] * len(members)
        assert await pool_balance(pool, "rule-busy") == -60 * len(members)
