"""A stateful property test of the ledger against a real PostgreSQL.

Hypothesis drives random earns, redeems, batches, exact duplicates (same
event id), re-sent requests (same client and request id, new event id) and
reversals through ``apply_batch`` and ``reverse_transaction``, each in its own
transaction, while a small in-memory model says what every balance must be.
After every step the ledger must agree with the model, ``verify_ledger`` must
find nothing, and no member may be negative.

Hypothesis's state machines are synchronous, and asyncpg needs an event loop:
the machine hands its coroutines to a loop running in a background thread.
Every example starts from an empty ledger in a schema of its own (the ledger's
tables are append-only, so they cannot be emptied between examples), migrated
afresh and dropped at teardown.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar
from uuid import UUID

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from contracts import PointsRequested, PointsRequestedEvent
from infra import db
from infra.runtime import INFRA_MIGRATIONS
from services.ledger.access import ReadScope
from services.ledger.app import MIGRATIONS
from services.ledger.applying import apply_batch
from services.ledger.reads import rule_totals
from services.ledger.reversals import NotReversible, ReversalOutcome, reverse_transaction
from services.ledger.verification import verify_ledger

T = TypeVar("T")

ORG = "org-1"
MEMBERS = ("member-1", "member-2", "member-3")
EARN_RULES = ("rule-a", "rule-b")
REDEEM_RULE = "rule-shop"
SCOPE = ReadScope(org_id=ORG, environment="staging")

amounts = st.integers(min_value=1, max_value=120)
members = st.sampled_from(MEMBERS)
requests = st.tuples(st.sampled_from(("earn", "redeem")), members, amounts)


class LoopThread:
    """An event loop in a daemon thread, so synchronous code can await coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass(frozen=True)
class Recorded:
    """What the model knows of one recorded transaction."""

    type: Literal["earn", "redeem", "reversal"]
    user_id: str
    rule_id: str
    amount: int
    applied: bool


def request(type: str, user_id: str, amount: int) -> PointsRequestedEvent:
    rule_id = EARN_RULES[amount % 2] if type == "earn" else REDEEM_RULE
    return PointsRequestedEvent.new_event(
        data=PointsRequested(
            request_id=uuid.uuid4().hex,
            transaction_id=uuid.uuid4(),
            client_id="client-1",
            rule_id=rule_id,
            rule_version=1,
            user_id=user_id,
            type=type,  # type: ignore[arg-type]
            amount=amount,
            requested_at=datetime.now(UTC),
        ),
        environment="staging",
        org_id=ORG,
        correlation_id=uuid.uuid4().hex,
    )


class LedgerMachine(RuleBasedStateMachine):
    """Bound to a server and a loop by :func:`test_the_ledger_always_agrees_with_a_simple_model`."""

    database_url: ClassVar[str]
    loop: ClassVar[LoopThread]

    def __init__(self) -> None:
        super().__init__()
        self.schema = f"ledger_prop_{uuid.uuid4().hex[:10]}"
        self.pool: asyncpg.Pool | None = None
        self.balances = dict.fromkeys(MEMBERS, 0)
        self.pools = dict.fromkeys((*EARN_RULES, REDEEM_RULE), 0)
        self.sent: list[PointsRequestedEvent] = []
        self.recorded: dict[UUID, Recorded] = {}
        self.reversals: dict[UUID, ReversalOutcome] = {}

    @initialize()
    def empty_ledger(self) -> None:
        self.pool = self.loop.run(self._open())

    async def _open(self) -> asyncpg.Pool:
        await db.migrate(self.database_url, self.schema, [INFRA_MIGRATIONS, MIGRATIONS])
        return await db.create_pool(self.database_url, self.schema, min_size=1, max_size=2)

    def teardown(self) -> None:
        self.loop.run(self._drop())

    async def _drop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        connection = await asyncpg.connect(self.database_url)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await connection.close()

    # -- driving the ledger ----------------------------------------------------

    def _apply(self, *events: PointsRequestedEvent) -> list[str]:
        async def apply() -> list[str]:
            assert self.pool is not None
            async with self.pool.acquire() as connection, connection.transaction():
                outcomes = await apply_batch(connection, events)
            return [outcome.status for outcome in outcomes]

        return self.loop.run(apply())

    def _reverse(self, transaction_id: UUID, reversal_id: UUID) -> ReversalOutcome:
        async def reverse() -> ReversalOutcome:
            assert self.pool is not None
            async with self.pool.acquire() as connection, connection.transaction():
                return await reverse_transaction(
                    connection,
                    environment="staging",
                    org_id=ORG,
                    transaction_id=transaction_id,
                    reversal_id=reversal_id,
                    reason="property test",
                    actor="user-1",
                )

        return self.loop.run(reverse())

    def _model_apply(self, event: PointsRequestedEvent) -> str:
        data = event.data
        applied = data.type == "earn" or self.balances[data.user_id] >= data.amount
        if applied:
            signed = data.amount if data.type == "earn" else -data.amount
            self.balances[data.user_id] += signed
            self.pools[data.rule_id] -= signed
        self.sent.append(event)
        self.recorded[data.transaction_id] = Recorded(
            data.type, data.user_id, data.rule_id, data.amount, applied
        )
        return "applied" if applied else "rejected"

    # -- rules -------------------------------------------------------------------

    @rule(user_id=members, amount=amounts)
    def earn(self, user_id: str, amount: int) -> None:
        event = request("earn", user_id, amount)
        assert self._apply(event) == [self._model_apply(event)]

    @rule(user_id=members, amount=amounts)
    def redeem(self, user_id: str, amount: int) -> None:
        event = request("redeem", user_id, amount)
        assert self._apply(event) == [self._model_apply(event)]

    @rule(batch=st.lists(requests, min_size=2, max_size=6), repeat_first=st.booleans())
    def apply_a_batch(self, batch: list[tuple[str, str, int]], repeat_first: bool) -> None:
        events = [request(*item) for item in batch]
        delivered = [*events, events[0]] if repeat_first else events
        assert self._apply(*delivered) == [self._model_apply(event) for event in events]

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def redeliver_an_event(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self.sent), label="redelivered")
        assert self._apply(event) == []

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def resend_a_request_under_a_new_event_id(self, data: st.DataObject) -> None:
        """The gateway publishing a late request again: the same outcome, published
        again, and nothing moves."""
        event = data.draw(st.sampled_from(self.sent), label="resent")
        settled = "applied" if self.recorded[event.data.transaction_id].applied else "rejected"
        assert self._apply(event.model_copy(update={"event_id": uuid.uuid4()})) == [settled]

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def reuse_a_request_id_for_another_transaction(self, data: st.DataObject) -> None:
        """A requestId the gateway forgot and accepted again is rejected; nothing moves."""
        event = data.draw(st.sampled_from(self.sent), label="reused")
        reused = event.model_copy(
            update={
                "event_id": uuid.uuid4(),
                "data": event.data.model_copy(update={"transaction_id": uuid.uuid4()}),
            }
        )
        assert self._apply(reused) == ["rejected"]

    @precondition(lambda self: self.recorded)
    @rule(data=st.data(), reuse_reversal_id=st.booleans())
    def reverse(self, data: st.DataObject, reuse_reversal_id: bool) -> None:
        transaction_id = data.draw(st.sampled_from(list(self.recorded)), label="reversed")
        original = self.recorded[transaction_id]
        earlier = self.reversals.get(transaction_id)
        reversal_id = earlier.reversal_id if earlier and reuse_reversal_id else uuid.uuid4()
        if original.type == "reversal" or not original.applied:
            with pytest.raises(NotReversible):
                self._reverse(transaction_id, reversal_id)
            return
        outcome = self._reverse(transaction_id, reversal_id)
        if earlier is not None:
            assert outcome == replace(earlier, replayed=True)
            return
        balance = self.balances[original.user_id]
        to_member = original.amount if original.type == "redeem" else -min(original.amount, balance)
        self.balances[original.user_id] += to_member
        self.pools[original.rule_id] -= to_member
        assert (outcome.reversed, outcome.uncovered, outcome.balance) == (
            abs(to_member),
            original.amount - abs(to_member),
            self.balances[original.user_id],
        )
        self.reversals[transaction_id] = outcome
        self.recorded[reversal_id] = Recorded(
            "reversal", original.user_id, original.rule_id, original.amount, applied=True
        )

    # -- invariants ------------------------------------------------------------

    @invariant()
    def the_ledger_agrees_with_the_model_and_verifies(self) -> None:
        if self.pool is None:
            return
        balances, pools, violations, nets = self.loop.run(self._observe())
        assert {member: balances.get(member, 0) for member in MEMBERS} == self.balances
        assert {rule: pools.get(rule, 0) for rule in self.pools} == self.pools
        assert all(balance >= 0 for balance in balances.values())
        assert violations == []
        assert nets == {rule: -self.pools[rule] for rule in EARN_RULES}

    async def _observe(
        self,
    ) -> tuple[dict[str, int], dict[str, int], list[str], dict[str, int]]:
        assert self.pool is not None
        async with self.pool.acquire() as connection:
            rows = await connection.fetch("SELECT kind, owner_id, balance FROM accounts")
            violations = await verify_ledger(connection)
            nets = {
                rule_id: (await rule_totals(connection, SCOPE, rule_id)).net
                for rule_id in EARN_RULES
            }
        by_kind: dict[str, dict[str, int]] = {"member": {}, "pool": {}}
        for row in rows:
            by_kind[row["kind"]][row["owner_id"]] = row["balance"]
        return by_kind["member"], by_kind["pool"], violations, nets


async def test_the_ledger_always_agrees_with_a_simple_model(database_url: str) -> None:
    loop = LoopThread()

    class BoundMachine(LedgerMachine):
        pass

    BoundMachine.database_url = database_url
    BoundMachine.loop = loop
    started = time.monotonic()
    try:
        await asyncio.to_thread(
            run_state_machine_as_test,
            BoundMachine,
            settings=settings(
                max_examples=50,
                stateful_step_count=40,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        loop.close()
    # Tuned to stay well inside CI time; shrink the settings above if this trips.
    assert time.monotonic() - started < 60
