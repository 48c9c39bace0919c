"""The ledger's documented balance limits against a real PostgreSQL and broker.

A request that would take a member or a rule's pool past its limit settles as
rejected (``BALANCE_LIMIT_EXCEEDED``) like an insufficient balance: nothing
moves, nothing is raised, and the requests after it apply.
"""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg
import pytest

from contracts import POINTS_REQUESTED, PointsRequestedEvent, PointsResultEvent
from contracts.limits import MAX_MEMBER_BALANCE, MAX_POINTS, MAX_POOL_BALANCE
from infra import quarantine
from infra.errors import ConcurrentUpdateConflict, is_transient
from services.ledger.applying import BALANCE_LIMIT_EXCEEDED, apply_batch
from services.ledger.reversals import ReversalPastLimit, reverse_transaction
from services.ledger.verification import verify_ledger
from tests.helpers import Service, eventually, produce
from tests.integration.test_ledger_app import (  # noqa: F401 - fixtures
    SHARED_PARTITION,
    issuer,
    ledger,
    results_by_transaction,
)
from tests.integration.test_ledger_service import (
    apply,
    balance,
    count,
    points_requested,
    pool_balance,
)

#: Earns of MAX_POINTS one pool can issue before the next passes its limit.
MAXIMAL_EARNS_PER_POOL = MAX_POOL_BALANCE // MAX_POINTS


async def verified(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as connection:
        return await verify_ledger(connection)


async def entries_of(pool: asyncpg.Pool, transaction_id: UUID) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM entries WHERE transaction_id = $1", transaction_id
        )
    )


def maximal_earns(rule_id: str, members: int, prefix: str = "member") -> list[PointsRequestedEvent]:
    return [
        points_requested(f"{prefix}-{index}", amount=MAX_POINTS, rule_id=rule_id)
        for index in range(members)
    ]


async def fill_pool(pool: asyncpg.Pool, rule_id: str, prefix: str = "member") -> int:
    """Earn MAX_POINTS for distinct members through ``rule_id`` until one more would pass
    the pool's limit; the pool's balance then."""
    await apply(pool, *maximal_earns(rule_id, MAXIMAL_EARNS_PER_POOL, prefix))
    return await pool_balance(pool, rule_id)


async def fill_pool_by_redeems(pool: asyncpg.Pool, rule_id: str) -> int:
    """Have members earn MAX_POINTS each through another rule, then redeem it all through
    ``rule_id``, until one more would pass its pool's limit; what the pool can still take."""
    earns = maximal_earns("rule-earn", MAXIMAL_EARNS_PER_POOL)
    await apply(pool, *earns)
    redeem = [
        points_requested(earn.data.user_id, type="redeem", amount=MAX_POINTS, rule_id=rule_id)
        for earn in earns
    ]
    await apply(pool, *redeem)
    return MAX_POOL_BALANCE - await pool_balance(pool, rule_id)


class TestAMembersLimit:
    async def test_an_earn_past_it_is_rejected_and_moves_nothing(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=MAX_POINTS, rule_id="rule-earn"))
        past = points_requested(amount=1, rule_id="rule-earn")

        [result] = await apply(pool, past)

        assert (result.type, result.data.status, result.data.reason) == (
            "points.rejected",
            "rejected",
            BALANCE_LIMIT_EXCEEDED,
        )
        assert result.data.balance == MAX_MEMBER_BALANCE
        assert await balance(pool) == MAX_MEMBER_BALANCE
        assert await pool_balance(pool, "rule-earn") == -MAX_MEMBER_BALANCE
        assert await entries_of(pool, past.data.transaction_id) == 0
        assert await verified(pool) == []

    async def test_an_earn_up_to_it_is_applied(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=MAX_MEMBER_BALANCE - 5))

        [result] = await apply(pool, points_requested(amount=5))

        assert (result.data.status, result.data.balance) == ("applied", MAX_MEMBER_BALANCE)

    async def test_repeated_maximal_earns_apply_once_and_the_rest_of_the_batch_applies(
        self, pool: asyncpg.Pool
    ) -> None:
        repeated = [points_requested(amount=MAX_POINTS, rule_id="rule-earn") for _ in range(5)]
        others = [points_requested("member-2", amount=7), points_requested(type="redeem", amount=3)]

        results = await apply(pool, *repeated, *others)

        assert [(result.data.status, result.data.reason) for result in results] == [
            ("applied", None),
            *[("rejected", BALANCE_LIMIT_EXCEEDED)] * 4,
            ("applied", None),
            ("applied", None),
        ]
        assert await balance(pool) == MAX_MEMBER_BALANCE - 3
        assert await balance(pool, "member-2") == 7
        assert await count(pool, "transactions") == 7
        assert await count(pool, "entries") == 6
        assert await verified(pool) == []

    async def test_a_member_at_it_may_redeem(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=MAX_POINTS))

        [result] = await apply(pool, points_requested(type="redeem", amount=MAX_POINTS))

        assert (result.data.status, result.data.balance) == ("applied", 0)

    async def test_an_insufficient_balance_is_told_before_a_limit(self, pool: asyncpg.Pool) -> None:
        [result] = await apply(pool, points_requested(type="redeem", amount=MAX_POINTS))

        assert result.data.reason == "INSUFFICIENT_BALANCE"


class TestARulesPoolLimit:
    async def test_an_earn_that_would_take_the_pool_past_it_is_rejected(
        self, pool: asyncpg.Pool
    ) -> None:
        filled = await fill_pool(pool, "rule-earn")
        room = MAX_POOL_BALANCE + filled  # what the pool can still issue
        past = points_requested("member-new", amount=room + 1, rule_id="rule-earn")
        then = points_requested("member-new", amount=room, rule_id="rule-earn")
        elsewhere = points_requested("member-new", amount=room + 1, rule_id="rule-other")

        results = await apply(pool, past, then, elsewhere)

        assert [(result.data.status, result.data.reason) for result in results] == [
            ("rejected", BALANCE_LIMIT_EXCEEDED),
            ("applied", None),
            ("applied", None),
        ]
        assert await pool_balance(pool, "rule-earn") == -MAX_POOL_BALANCE
        assert await balance(pool, "member-new") == 2 * room + 1
        assert await entries_of(pool, past.data.transaction_id) == 0
        assert await verified(pool) == []

    async def test_a_redeem_that_would_take_the_pool_past_it_is_rejected(
        self, pool: asyncpg.Pool
    ) -> None:
        await apply(pool, points_requested("member-x", amount=1_000, rule_id="rule-earn-2"))
        room = await fill_pool_by_redeems(pool, "rule-redeem")

        past, then = (
            points_requested("member-x", type="redeem", amount=amount, rule_id="rule-redeem")
            for amount in (room + 1, room)
        )
        results = await apply(pool, past, then)

        assert [(result.data.status, result.data.reason) for result in results] == [
            ("rejected", BALANCE_LIMIT_EXCEEDED),
            ("applied", None),
        ]
        assert results[0].data.balance == 1_000
        assert await pool_balance(pool, "rule-redeem") == MAX_POOL_BALANCE
        assert await verified(pool) == []

    async def test_two_batches_racing_to_the_limit_apply_one_and_retry_the_other(
        self, pool: asyncpg.Pool
    ) -> None:
        filled = await fill_pool(pool, "rule-earn")
        room = MAX_POOL_BALANCE + filled
        first = points_requested("member-a", amount=room, rule_id="rule-earn")
        second = points_requested("member-b", amount=room, rule_id="rule-earn")

        async with pool.acquire() as winner, pool.acquire() as loser:
            async with winner.transaction():
                await apply_batch(winner, [first])  # holds the pool's lock until it commits
                racing = asyncio.create_task(apply_in_transaction(loser, second))
                await until_waiting_for_a_lock(pool)
            with pytest.raises(ConcurrentUpdateConflict) as raised:
                await racing
        assert is_transient(raised.value)

        [retried] = await apply(pool, second)

        assert (retried.data.status, retried.data.reason) == ("rejected", BALANCE_LIMIT_EXCEEDED)
        assert await pool_balance(pool, "rule-earn") == -MAX_POOL_BALANCE
        assert await balance(pool, "member-b") == 0
        assert await verified(pool) == []


async def apply_in_transaction(connection: asyncpg.Connection, event: PointsRequestedEvent) -> None:
    async with connection.transaction():
        await apply_batch(connection, [event])


async def until_waiting_for_a_lock(pool: asyncpg.Pool) -> None:
    await eventually(
        lambda: pool.fetchval("SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted)"),
        timeout=10,
        what="the second batch to wait for the pool's lock",
    )


class TestReversalsNearALimit:
    async def test_reversing_a_redeem_past_the_members_limit_is_refused(
        self, pool: asyncpg.Pool
    ) -> None:
        redeem = points_requested(type="redeem", amount=10, rule_id="rule-redeem")
        await apply(pool, points_requested(amount=10), redeem)
        await apply(pool, points_requested(amount=MAX_POINTS))

        with pytest.raises(ReversalPastLimit) as refused:
            await reverse(pool, redeem.data.transaction_id)

        assert (refused.value.status, refused.value.code) == (409, BALANCE_LIMIT_EXCEEDED)
        assert await balance(pool) == MAX_MEMBER_BALANCE
        assert await count(pool, "transactions") == 3
        await apply(pool, points_requested(type="redeem", amount=10))
        assert (await reverse(pool, redeem.data.transaction_id)).balance == MAX_MEMBER_BALANCE
        assert await verified(pool) == []

    async def test_reversing_an_earn_past_the_pools_limit_is_refused(
        self, pool: asyncpg.Pool
    ) -> None:
        earn = points_requested("member-x", amount=1_000, rule_id="rule-p")
        await apply(pool, earn)
        room = await fill_pool_by_redeems(pool, "rule-p")
        await apply(pool, points_requested("member-y", amount=room, rule_id="rule-other"))
        await apply(
            pool, points_requested("member-y", type="redeem", amount=room, rule_id="rule-p")
        )
        assert await pool_balance(pool, "rule-p") == MAX_POOL_BALANCE

        with pytest.raises(ReversalPastLimit):
            await reverse(pool, earn.data.transaction_id)

        assert await balance(pool, "member-x") == 1_000
        assert await verified(pool) == []


async def reverse(pool: asyncpg.Pool, transaction_id: UUID) -> object:
    async with pool.acquire() as connection, connection.transaction():
        return await reverse_transaction(
            connection,
            environment="staging",
            org_id="org-1",
            transaction_id=transaction_id,
            reversal_id=uuid4(),
            reason="refunded order 42",
            actor="user-1",
        )


class TestTheDatabaseBackstop:
    """The migration's constraints hold the figures of contracts.limits."""

    @pytest.mark.parametrize(
        ("kind", "allowed", "refused"),
        [
            ("member", MAX_MEMBER_BALANCE, MAX_MEMBER_BALANCE + 1),
            ("pool", MAX_POOL_BALANCE, MAX_POOL_BALANCE + 1),
            ("pool", -MAX_POOL_BALANCE, -MAX_POOL_BALANCE - 1),
        ],
    )
    async def test_refuses_a_balance_past_the_documented_limit(
        self, pool: asyncpg.Pool, kind: str, allowed: int, refused: int
    ) -> None:
        account = await pool.fetchval(
            "INSERT INTO accounts (environment, org_id, kind, owner_id) "
            "VALUES ('staging', 'org-1', $1, 'owner') RETURNING id",
            kind,
        )
        set_balance = "UPDATE accounts SET balance = $2 WHERE id = $1"

        await pool.execute(set_balance, account, allowed)
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(set_balance, account, refused)


class TestThroughTheBroker:
    async def test_the_request_past_a_limit_fails_and_the_next_ones_apply(
        self,
        ledger: Service,  # noqa: F811 - the fixture
    ) -> None:
        servers = ledger.runtime.settings.kafka_bootstrap_servers
        async with ledger.runtime.pool.acquire() as connection, connection.transaction():
            await apply_batch(connection, [points_requested(amount=MAX_POINTS, rule_id="rule-1")])
        past = points_requested(amount=MAX_POINTS, rule_id="rule-1")
        after = points_requested("member-after", amount=30, rule_id="rule-1")
        await produce(servers, POINTS_REQUESTED, [past, after], key=SHARED_PARTITION)

        results: dict[UUID, PointsResultEvent] = await results_by_transaction(
            servers, 3, timeout=30
        )

        failed = results[past.data.transaction_id].data
        assert (failed.status, failed.reason, failed.balance) == (
            "rejected",
            BALANCE_LIMIT_EXCEEDED,
            MAX_MEMBER_BALANCE,
        )
        assert results[after.data.transaction_id].data.status == "applied"
        async with ledger.runtime.pool.acquire() as connection:
            assert await quarantine.list_quarantined(connection, include_resolved=True) == []
            assert await verify_ledger(connection) == []
