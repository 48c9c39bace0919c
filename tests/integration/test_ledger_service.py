"""The ledger's service layer against a real PostgreSQL: double entry, idempotency, outbox."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal
from uuid import uuid4

import asyncpg
import pytest

from contracts import PointsRequested, PointsRequestedEvent, PointsResultEvent
from services.ledger.access import ReadScope
from services.ledger.applying import INSUFFICIENT_BALANCE, apply_batch
from services.ledger.reads import member_balance, member_history
from services.ledger.verification import verify_ledger

STAGING = ReadScope(org_id="org-1", environment="staging")


def points_requested(
    user_id: str = "member-1",
    *,
    type: Literal["earn", "redeem"] = "earn",
    amount: int = 100,
    rule_id: str | None = None,
    org_id: str = "org-1",
    environment: Literal["staging", "production"] = "staging",
    callback_url: str | None = "https://partner.example.com/hooks/points",
    request_id: str | None = None,
    expires_at: datetime | None = None,
) -> PointsRequestedEvent:
    return PointsRequestedEvent.new_event(
        data=PointsRequested(
            request_id=request_id or f"request-{uuid4().hex[:8]}",
            transaction_id=uuid4(),
            client_id="client-1",
            rule_id=rule_id or f"rule-{type}",
            rule_version=1,
            user_id=user_id,
            type=type,
            amount=amount,
            callback_url=callback_url,
            requested_at=datetime.now(UTC),
            expires_at=expires_at,
        ),
        environment=environment,
        org_id=org_id,
        correlation_id=f"correlation-{uuid4().hex[:8]}",
    )


async def apply(pool: asyncpg.Pool, *events: PointsRequestedEvent) -> list[PointsResultEvent]:
    """Apply ``events`` as one batch; the results it staged in the outbox, as sent."""
    async with pool.acquire() as connection, connection.transaction():
        staged_before = await connection.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        await apply_batch(connection, events)
        rows = await connection.fetch(
            "SELECT payload FROM outbox WHERE id > $1 ORDER BY id", staged_before
        )
    return [PointsResultEvent.model_validate_json(row["payload"]) for row in rows]


async def balance(pool: asyncpg.Pool, user_id: str = "member-1") -> int:
    async with pool.acquire() as connection:
        return await member_balance(connection, STAGING, user_id)


async def pool_balance(pool: asyncpg.Pool, rule_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT balance FROM accounts WHERE kind = 'pool' AND owner_id = $1", rule_id
        )
    )


async def count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608 - test tables


async def outbox_results(pool: asyncpg.Pool) -> list[PointsResultEvent]:
    rows = await pool.fetch("SELECT payload FROM outbox ORDER BY id")
    return [PointsResultEvent.model_validate_json(row["payload"]) for row in rows]


class TestEarn:
    async def test_credits_the_member_and_debits_the_rules_pool(self, pool: asyncpg.Pool) -> None:
        [result] = await apply(pool, points_requested(amount=100, rule_id="rule-welcome"))

        assert await balance(pool) == 100
        assert await pool_balance(pool, "rule-welcome") == -100
        assert result.data.status == "applied"
        assert result.data.balance == 100

    async def test_records_entries_that_sum_to_zero(self, pool: asyncpg.Pool) -> None:
        event = points_requested(amount=70)
        await apply(pool, event)

        amounts = await pool.fetch(
            "SELECT amount FROM entries WHERE transaction_id = $1", event.data.transaction_id
        )
        assert sorted(row["amount"] for row in amounts) == [-70, 70]

    async def test_keeps_environments_and_organisations_apart(self, pool: asyncpg.Pool) -> None:
        await apply(
            pool,
            points_requested(amount=10, environment="production"),
            points_requested(amount=20, org_id="org-2"),
        )

        assert await balance(pool) == 0
        async with pool.acquire() as connection:
            production = ReadScope(org_id="org-1", environment="production")
            assert await member_balance(connection, production, "member-1") == 10


class TestRedeem:
    async def test_moves_points_from_the_member_back_to_the_pool(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=100))
        [result] = await apply(pool, points_requested(type="redeem", amount=30, rule_id="shop"))

        assert result.data.status == "applied"
        assert await balance(pool) == 70
        assert await pool_balance(pool, "shop") == 30

    async def test_over_the_balance_is_rejected_and_changes_nothing(
        self, pool: asyncpg.Pool
    ) -> None:
        await apply(pool, points_requested(amount=50))
        entries_before = await count(pool, "entries")

        [result] = await apply(pool, points_requested(type="redeem", amount=51))

        assert result.type == "points.rejected"
        assert (result.data.status, result.data.reason) == ("rejected", INSUFFICIENT_BALANCE)
        assert result.data.balance == 50
        assert await balance(pool) == 50
        assert await count(pool, "entries") == entries_before
        rejected = await pool.fetchrow(
            "SELECT status, reason FROM transactions WHERE id = $1", result.data.transaction_id
        )
        assert dict(rejected.items()) == {"status": "rejected", "reason": INSUFFICIENT_BALANCE}

    async def test_sees_the_points_earned_earlier_in_the_same_batch(
        self, pool: asyncpg.Pool
    ) -> None:
        results = await apply(
            pool,
            points_requested(amount=40),
            points_requested(type="redeem", amount=40),
            points_requested(type="redeem", amount=1),
        )

        assert [r.data.status for r in results] == ["applied", "applied", "rejected"]
        assert await balance(pool) == 0


class TestRedelivery:
    async def test_the_same_event_twice_in_one_batch_counts_once(self, pool: asyncpg.Pool) -> None:
        event = points_requested(amount=25)

        results = await apply(pool, event, event)

        assert len(results) == 1
        assert await balance(pool) == 25
        assert len(await outbox_results(pool)) == 1

    async def test_the_same_event_in_two_batches_counts_once(self, pool: asyncpg.Pool) -> None:
        event = points_requested(amount=25)

        first = await apply(pool, event)
        second = await apply(pool, event)

        assert (len(first), second) == (1, [])
        assert await balance(pool) == 25
        assert len(await outbox_results(pool)) == 1

    async def test_the_same_request_under_a_new_event_id_is_not_applied_again(
        self, pool: asyncpg.Pool
    ) -> None:
        event = points_requested(amount=25)
        republished = event.model_copy(update={"event_id": uuid4()})

        await apply(pool, event)
        await apply(pool, republished)

        assert await balance(pool) == 25

    async def test_the_same_request_again_publishes_its_result_again_as_the_same_event(
        self, pool: asyncpg.Pool
    ) -> None:
        event = points_requested(amount=25)
        await apply(pool, event)

        await apply(pool, event.model_copy(update={"event_id": uuid4()}))

        first, again = await outbox_results(pool)
        assert again.event_id == first.event_id
        assert again.data.status == "applied"
        assert again.data.transaction_id == event.data.transaction_id

    async def test_a_request_id_used_before_for_another_transaction_is_rejected(
        self, pool: asyncpg.Pool
    ) -> None:
        event = points_requested(amount=25)
        await apply(pool, event)
        reused = points_requested(amount=40, request_id=event.data.request_id)

        await apply(pool, reused)

        assert await balance(pool) == 25
        _, rejection = await outbox_results(pool)
        assert rejection.data.transaction_id == reused.data.transaction_id
        assert (rejection.data.status, rejection.data.reason) == ("rejected", "REQUEST_ID_REUSED")
        assert rejection.data.balance == 25


class TestOutbox:
    async def test_results_carry_the_requests_details_and_the_balance_after(
        self, pool: asyncpg.Pool
    ) -> None:
        event = points_requested(amount=60)
        await apply(pool, event)

        [result] = await outbox_results(pool)
        row = await pool.fetchrow("SELECT topic, key, headers FROM outbox")

        assert (row["topic"], row["key"]) == ("points.results.v1", "staging:org-1:member-1")
        assert row["headers"]["correlation_id"] == event.correlation_id
        assert result.correlation_id == event.correlation_id
        assert result.data.transaction_id == event.data.transaction_id
        assert result.data.request_id == event.data.request_id
        assert result.data.callback_url == event.data.callback_url
        assert result.data.balance == 60

    async def test_results_roll_back_with_the_batch(self, pool: asyncpg.Pool) -> None:
        with pytest.raises(RuntimeError, match="handler failed"):
            async with pool.acquire() as connection, connection.transaction():
                await apply_batch(connection, [points_requested(amount=60)])
                raise RuntimeError("handler failed after applying")

        for table in ("outbox", "inbox", "transactions", "entries"):
            assert await count(pool, table) == 0, table
        assert await balance(pool) == 0

    async def test_results_commit_with_the_batch(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await apply_batch(connection, [points_requested(amount=60)])
            # Seen inside the batch's transaction, before it commits.
            assert await connection.fetchval("SELECT count(*) FROM outbox") == 1
            assert await pool.fetchval("SELECT count(*) FROM outbox") == 0

        assert await count(pool, "outbox") == 1


class TestDatabaseGuards:
    async def test_a_member_balance_can_never_go_below_zero(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=5))

        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute("UPDATE accounts SET balance = -1 WHERE kind = 'member'")

    async def test_entries_can_be_neither_changed_nor_removed(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=5))

        with pytest.raises(asyncpg.RestrictViolationError):
            await pool.execute("UPDATE entries SET amount = amount * 2")
        with pytest.raises(asyncpg.RestrictViolationError):
            await pool.execute("DELETE FROM entries")
        assert await count(pool, "entries") == 2

    async def test_entries_that_do_not_balance_are_refused(self, pool: asyncpg.Pool) -> None:
        event = points_requested(amount=5)
        await apply(pool, event, points_requested("member-2", amount=5))

        with pytest.raises(asyncpg.CheckViolationError, match="do not sum to zero"):
            await pool.execute(
                "INSERT INTO entries (transaction_id, account_id, amount) "
                "SELECT $1, id, 10 FROM accounts WHERE owner_id = 'member-2'",
                event.data.transaction_id,
            )

    async def test_entries_must_name_a_transaction_and_an_account_that_exist(
        self, pool: asyncpg.Pool
    ) -> None:
        [rejected] = await apply(pool, points_requested(type="redeem", amount=5))
        member, rules_pool = [
            row["id"] for row in await pool.fetch("SELECT id FROM accounts ORDER BY kind")
        ]
        balanced = (
            "INSERT INTO entries (transaction_id, account_id, amount)"
            " VALUES ($1, $2, 5), ($1, $3, -5)"
        )

        with pytest.raises(asyncpg.ForeignKeyViolationError, match="transaction"):
            await pool.execute(balanced, uuid4(), member, rules_pool)
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="account"):
            await pool.execute(balanced, rejected.data.transaction_id, member, -1)
        assert await count(pool, "entries") == 0

    async def test_accounts_can_be_neither_removed_nor_renumbered(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=5))

        with pytest.raises(asyncpg.RestrictViolationError):
            await pool.execute("DELETE FROM accounts")
        with pytest.raises(asyncpg.RestrictViolationError):
            await pool.execute("TRUNCATE accounts")
        with pytest.raises(asyncpg.RestrictViolationError):
            await pool.execute("UPDATE accounts SET id = DEFAULT")
        assert await count(pool, "accounts") == 2


class TestConcurrency:
    async def test_overlapping_batches_neither_deadlock_nor_lose_points(
        self, pool: asyncpg.Pool
    ) -> None:
        members = [f"member-{n}" for n in range(6)]
        shuffler = random.Random(7)  # a fixed seed: the same interleaving on every run

        def batch() -> list[PointsRequestedEvent]:
            order = shuffler.sample(members, len(members))
            return [points_requested(user, amount=10, rule_id=f"rule-{user[-1]}") for user in order]

        batches: list[Sequence[PointsRequestedEvent]] = [batch() for _ in range(8)]
        await asyncio.wait_for(asyncio.gather(*(apply(pool, *b) for b in batches)), 30)

        for member in members:
            assert await balance(pool, member) == 80, member
        async with pool.acquire() as connection:
            assert await verify_ledger(connection) == []


class TestHistory:
    async def test_lists_a_members_transactions_newest_first_page_by_page(
        self, pool: asyncpg.Pool
    ) -> None:
        events = [points_requested(amount=n) for n in (1, 2, 3)]
        for event in events:
            await apply(pool, event)
        await apply(pool, points_requested(type="redeem", amount=100))

        async with pool.acquire() as connection:
            first = await member_history(connection, STAGING, "member-1", limit=3)
            second = await member_history(
                connection, STAGING, "member-1", limit=3, cursor=first.next_cursor
            )

        assert [(i.status, i.amount) for i in first.items] == [
            ("rejected", 100),
            ("applied", 3),
            ("applied", 2),
        ]
        assert [i.transaction_id for i in second.items] == [events[0].data.transaction_id]
        assert second.next_cursor is None


class TestVerifyLedger:
    async def test_reports_nothing_on_a_healthy_ledger(self, pool: asyncpg.Pool) -> None:
        await apply(pool, points_requested(amount=10), points_requested(type="redeem", amount=99))

        async with pool.acquire() as connection:
            assert await verify_ledger(connection) == []

    async def test_reports_a_balance_that_differs_from_its_entries(
        self, pool: asyncpg.Pool
    ) -> None:
        await apply(pool, points_requested(amount=10))
        await pool.execute("UPDATE accounts SET balance = 1000 WHERE kind = 'member'")

        async with pool.acquire() as connection:
            violations = await verify_ledger(connection)

        assert len(violations) == 1
        assert "balance 1000 but its entries sum to 10" in violations[0]
        assert "'member-1'" in violations[0]

    async def test_reports_an_applied_transaction_without_entries(self, pool: asyncpg.Pool) -> None:
        event = points_requested(amount=10)
        # Bypasses the service on purpose, as a faulty writer would.
        await pool.execute(
            "INSERT INTO transactions (id, environment, org_id, user_id, request_id, client_id,"
            " rule_id, rule_version, correlation_id, type, amount, status)"
            " VALUES ($1, 'staging', 'org-1', 'member-1', 'r', 'c', 'rule', 1, 'x', 'earn', 10,"
            " 'applied')",
            event.data.transaction_id,
        )

        async with pool.acquire() as connection:
            violations = await verify_ledger(connection)

        assert violations == [f"Applied transaction {event.data.transaction_id} has no entries."]


def test_helpers_build_valid_contract_events() -> None:
    event = points_requested()
    assert json.loads(event.model_dump_json())["data"]["user_id"] == "member-1"
