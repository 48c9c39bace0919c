"""Issue 19 at the gateway: an earn carries when its points expire, and a member the
business blocked is refused, on every replica, as soon as the rules service answered.

Two gateway replicas share one database and broker with the rules service (token
issuer and client lifecycle). Rules with an expiry policy and members' standings
reach the gateway as ``rules.lifecycle.v1`` and ``members.lifecycle.v1`` events,
produced here as the rules service would.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest_asyncio

from contracts import (
    ALL_TOPICS,
    GATEWAY_PROJECTION_GROUP,
    MEMBERS_LIFECYCLE,
    RULES_LIFECYCLE,
    MemberLifecycleEvent,
    MemberStanding,
    PointsRequestedEvent,
    PointsResult,
    PointsResultEvent,
    RuleLifecycleEvent,
    RuleSnapshot,
)
from infra import outbox
from infra.catchup import GroupProgress
from infra.kafka_admin import create_topics
from infra.runtime import ServiceRuntime
from infra.tokens import JwksVerifier
from services.rules.app import create_app as create_rules_app
from services.rules.propagation import Propagation
from services.trigger import settlement
from services.trigger.app import create_app as create_trigger_app
from services.trigger.housekeeping import redrive_pending_requests
from tests.helpers import (
    RULES_URL,
    TRIGGER_URL,
    Seeder,
    asgi_client,
    bearer,
    client_token,
    eventually,
    fresh_database,
    kafka_broker,
    produce,
    rules_settings,
    rules_transaction,
)
from tests.integration.test_trigger_gateway import (
    REQUESTS_PATH,
    assert_refused,
    gateway_settings,
    publish_result,
    published_request,
    published_requests,
)

FIXED_EXPIRY = datetime(2027, 12, 31, 23, 0, tzinfo=UTC)


@dataclass
class Stack:
    """Two gateway replicas, the rules service, and one staging client of one organisation."""

    gateways: tuple[httpx.AsyncClient, httpx.AsyncClient]
    runtime: ServiceRuntime  # the first replica's
    propagation: Propagation  # the rules service's
    bootstrap_servers: str
    database_url: str
    org_id: str
    client_id: str
    token: str

    async def trigger(
        self, rule_id: str, user_id: str = "member-1", *, replica: int = 0, amount: int = 10
    ) -> httpx.Response:
        body = {
            "userId": user_id,
            "ruleId": rule_id,
            "amount": amount,
            "requestId": f"req-{uuid.uuid4().hex}",
        }
        return await self.gateways[replica].post(
            REQUESTS_PATH, json=body, headers=bearer(self.token)
        )

    async def rule(self, *, rule_type: str = "earn", **policy: Any) -> str:
        """A new active rule this client may trigger, once the gateway has it."""
        now = datetime.now(UTC)
        rule = RuleSnapshot(
            rule_id=f"rule_{uuid.uuid4().hex[:12]}",
            org_id=self.org_id,
            environment="staging",
            name="Expiring rule",
            type=rule_type,  # type: ignore[arg-type]
            status="active",
            api_trigger=True,
            authorized_client_ids=(self.client_id,),
            starts_at=now - timedelta(days=1),
            ends_at=now + timedelta(days=30),
            version=1,
            updated_at=now,
            **policy,
        )
        event = RuleLifecycleEvent.new_event(
            data=rule,
            environment="staging",
            org_id=self.org_id,
            correlation_id="test-rule",
            type="rule.activated",
        )
        await produce(self.bootstrap_servers, RULES_LIFECYCLE, [event])

        async def projected() -> bool:
            found = await self.runtime.pool.fetchval(
                "SELECT count(*) FROM rules WHERE rule_id = $1", rule.rule_id
            )
            return bool(found)

        await eventually(projected, what="the rule reaching the gateway")
        return rule.rule_id

    def standing(
        self, user_id: str, *, blocked: bool, changed_at: datetime
    ) -> MemberLifecycleEvent:
        return MemberLifecycleEvent.new_event(
            data=MemberStanding(
                org_id=self.org_id,
                environment="staging",
                user_id=user_id,
                blocked=blocked,
                reason="abuse" if blocked else None,
                changed_by="usr_test",
                changed_at=changed_at,
            ),
            environment="staging",
            org_id=self.org_id,
            correlation_id="test-member",
        )

    async def change_standing(self, *events: MemberLifecycleEvent) -> None:
        """Publish the events and wait until the gateway's projection consumed them."""
        await produce(self.bootstrap_servers, MEMBERS_LIFECYCLE, events)
        async with self.progress() as progress:
            partitions = await progress.partitions(MEMBERS_LIFECYCLE)
            consumed = await progress.consumed(GATEWAY_PROJECTION_GROUP, partitions, timeout=30)
        assert consumed, "the gateway did not consume the member's standing in time"

    async def projection_group_settled(self) -> None:
        """Wait until the replicas' projection group is stable (not rebalancing)."""
        async with self.progress() as progress:

            async def stable() -> bool:
                return await progress.is_consuming(GATEWAY_PROJECTION_GROUP)

            await eventually(stable, what="the projection group to settle")

    @asynccontextmanager
    async def progress(self) -> AsyncIterator[GroupProgress]:
        progress = GroupProgress(gateway_settings(self.database_url, self.bootstrap_servers))
        try:
            yield progress
        finally:
            await progress.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(postgres_server_dsn: str) -> AsyncIterator[Stack]:
    with kafka_broker() as bootstrap_servers:
        async with fresh_database(postgres_server_dsn) as database_url:
            await create_topics(bootstrap_servers, ALL_TOPICS)
            settings = rules_settings(database_url, bootstrap_servers)
            rules_app, rules_runtime = create_rules_app(settings)
            replicas = [
                create_trigger_app(
                    gateway_settings(database_url, bootstrap_servers),
                    verifier=JwksVerifier(RULES_URL, http=asgi_client(rules_app, RULES_URL)),
                )
                for _ in range(2)
            ]
            await rules_runtime.start()
            try:
                for _, runtime in replicas:
                    await runtime.start()
                try:
                    async with (
                        asgi_client(rules_app, RULES_URL) as rules_http,
                        asgi_client(replicas[0][0], TRIGGER_URL) as first,
                        asgi_client(replicas[1][0], TRIGGER_URL) as second,
                    ):
                        seeder = Seeder(database_url, settings)
                        organisation = await seeder.organisation()
                        client = await seeder.client(organisation.id)
                        stack = Stack(
                            (first, second),
                            replicas[0][1],
                            rules_app.state.rules.propagation,
                            bootstrap_servers,
                            database_url,
                            organisation.id,
                            client.client_id,
                            await client_token(rules_http, client),
                        )

                        async def client_projected() -> bool:
                            return bool(
                                await stack.runtime.pool.fetchval(
                                    "SELECT count(*) FROM clients WHERE client_id = $1",
                                    client.client_id,
                                )
                            )

                        await eventually(client_projected, what="the client reaching the gateway")
                        yield stack
                finally:
                    for _, runtime in reversed(replicas):
                        await runtime.stop()
            finally:
                await rules_runtime.stop()


async def accepted_event(stack: Stack, response: httpx.Response) -> PointsRequestedEvent:
    assert response.status_code == 202, response.text
    _, event = await published_request(stack.bootstrap_servers, response.json()["requestId"])
    return event


class TestExpiryOfEarnedPoints:
    async def test_an_earn_on_a_rule_whose_points_expire_after_days_says_when_they_expire(
        self, stack: Stack
    ) -> None:
        rule_id = await stack.rule(points_expire_after_days=30)

        event = await accepted_event(stack, await stack.trigger(rule_id))

        assert event.data.expires_at == event.data.requested_at + timedelta(days=30)

    async def test_an_earn_on_a_rule_whose_points_expire_at_an_instant_carries_that_instant(
        self, stack: Stack
    ) -> None:
        rule_id = await stack.rule(points_expire_at=FIXED_EXPIRY)

        event = await accepted_event(stack, await stack.trigger(rule_id, replica=1))

        assert event.data.expires_at == FIXED_EXPIRY

    async def test_an_earn_on_a_rule_without_expiry_and_a_redeem_expire_nothing(
        self, stack: Stack
    ) -> None:
        earn, redeem = await stack.rule(), await stack.rule(rule_type="redeem")

        earned = await accepted_event(stack, await stack.trigger(earn))
        redeemed = await accepted_event(stack, await stack.trigger(redeem))

        assert (earned.data.expires_at, redeemed.data.expires_at) == (None, None)
        assert redeemed.data.type == "redeem"

    async def test_a_request_published_again_keeps_its_expiry(self, stack: Stack) -> None:
        rule_id = await stack.rule(points_expire_after_days=7)
        accepted = (await stack.trigger(rule_id)).json()
        await stack.runtime.pool.execute(
            "UPDATE requests SET created_at = created_at - interval '10 minutes'"
            " WHERE request_id = $1",
            accepted["requestId"],
        )

        await redrive_pending_requests(stack.runtime.pool, pending_for_seconds=300)

        (_, first), (_, again) = await published_requests(
            stack.bootstrap_servers, accepted["requestId"], 2
        )
        assert first.data.expires_at is not None
        assert again.data.expires_at == first.data.expires_at


class TestBlockedMembers:
    async def test_a_blocked_member_is_refused_on_both_replicas_and_others_still_earn(
        self, stack: Stack
    ) -> None:
        rule_id = await stack.rule()
        await stack.change_standing(
            stack.standing("member-blocked", blocked=True, changed_at=datetime.now(UTC))
        )

        on_first = await stack.trigger(rule_id, "member-blocked")
        on_second = await stack.trigger(rule_id, "member-blocked", replica=1)
        other = await stack.trigger(rule_id, "member-other")

        assert_refused(on_first, 400, "MEMBER_BLOCKED")
        assert "member-blocked" in on_first.json()["detail"]
        assert_refused(on_second, 400, "MEMBER_BLOCKED")
        assert other.status_code == 202
        recorded = await stack.runtime.pool.fetchval(
            "SELECT count(*) FROM requests WHERE user_id = 'member-blocked'"
        )
        assert recorded == 0

    async def test_a_blocked_member_on_an_unknown_rule_hears_that_the_rule_is_not_found(
        self, stack: Stack
    ) -> None:
        await stack.change_standing(
            stack.standing("member-lost", blocked=True, changed_at=datetime.now(UTC))
        )

        response = await stack.trigger("rule_that_does_not_exist", "member-lost")

        assert_refused(response, 400, "RULE_NOT_FOUND")

    async def test_an_unblocked_member_is_accepted_and_an_older_block_replayed_changes_nothing(
        self, stack: Stack
    ) -> None:
        rule_id = await stack.rule()
        blocked_at = datetime.now(UTC)
        block = stack.standing("member-back", blocked=True, changed_at=blocked_at)
        await stack.change_standing(block)
        assert_refused(await stack.trigger(rule_id, "member-back"), 400, "MEMBER_BLOCKED")

        await stack.change_standing(
            stack.standing(
                "member-back", blocked=False, changed_at=blocked_at + timedelta(seconds=1)
            )
        )
        unblocked = await stack.trigger(rule_id, "member-back")
        await stack.change_standing(block)  # the older event, delivered again
        after_replay = await stack.trigger(rule_id, "member-back", replica=1)

        assert unblocked.status_code == 202, unblocked.text
        assert after_replay.status_code == 202, after_replay.text

    async def test_a_block_the_rules_service_answered_refuses_the_very_next_trigger(
        self, stack: Stack
    ) -> None:
        rule_id = await stack.rule()
        block = stack.standing("member-now", blocked=True, changed_at=datetime.now(UTC))
        # The rules service waits only for a group that runs; this stack's gateway has
        # just started, so its consumer may not have joined the group yet.
        await stack.projection_group_settled()
        # As the rules service answers a change: commit its event with the outbox row,
        # then wait until the gateway has it (services/rules/propagation.py).
        async with (
            rules_transaction(stack.database_url) as connection,
            outbox.staging(connection) as staged,
        ):
            await outbox.enqueue(connection, block)
        assert staged.row_id is not None

        assert await stack.propagation.reach_readers(staged)
        response = await stack.trigger(rule_id, "member-now", replica=1)

        assert_refused(response, 400, "MEMBER_BLOCKED")


def ledger_result(
    stack: Stack, rule_id: str, accepted: dict[str, Any], status: str
) -> PointsResultEvent:
    """What the ledger publishes about an accepted 10-point earn of member-1: applied,
    or (later) expired, 4 of its points being left."""
    result = PointsResult(
        request_id=accepted["requestId"],
        transaction_id=uuid.UUID(accepted["transactionId"]),
        client_id=stack.client_id,
        rule_id=rule_id,
        user_id="member-1",
        type="earn",
        amount=10,
        status=status,  # type: ignore[arg-type]
        balance=10,
        processed_at=datetime.now(UTC),
        **(
            {"expiry_id": uuid.uuid4(), "expired_amount": 4, "expires_at": datetime.now(UTC)}
            if status == "expired"
            else {}
        ),
    )
    return PointsResultEvent.new_event(
        data=result, environment="staging", org_id=stack.org_id, correlation_id="ledger-test"
    )


class TestSettlingExpiries:
    """An expiry settles nothing and frees no cap: the earn it concerns succeeded."""

    async def request(self, stack: Stack, rule_id: str) -> dict[str, Any]:
        response = await stack.trigger(rule_id)
        assert response.status_code == 202, response.text
        accepted: dict[str, Any] = response.json()
        return accepted

    async def status(self, stack: Stack, accepted: dict[str, Any]) -> str:
        return str(
            await stack.runtime.pool.fetchval(
                "SELECT status FROM requests WHERE request_id = $1", accepted["requestId"]
            )
        )

    async def cap_used(self, stack: Stack, rule_id: str) -> int:
        return int(
            await stack.runtime.pool.fetchval(
                "SELECT used FROM cap_usage WHERE rule_id = $1", rule_id
            )
        )

    async def test_an_expiry_ahead_of_its_earns_outcome_in_a_batch_changes_nothing(
        self, stack: Stack
    ) -> None:
        rule_id = await stack.rule(points_expire_after_days=1, cap_max=100)
        accepted = await self.request(stack, rule_id)
        batch = [
            ledger_result(stack, rule_id, accepted, "expired"),
            ledger_result(stack, rule_id, accepted, "applied"),
        ]

        async with stack.runtime.pool.acquire() as connection, connection.transaction():
            await settlement.settle_results(connection, batch)

        assert await self.status(stack, accepted) == "succeeded"
        assert await self.cap_used(stack, rule_id) == 10

    async def test_an_expiry_on_kafka_is_consumed_without_quarantine_or_effect(
        self, stack: Stack
    ) -> None:
        rule_id = await stack.rule(points_expire_after_days=1, cap_max=100)
        pending = await self.request(stack, rule_id)
        applied = await self.request(stack, rule_id)

        # On the member's partition, the expiry first, then an outcome to wait for.
        await publish_result(
            stack.bootstrap_servers, ledger_result(stack, rule_id, pending, "expired")
        )
        await publish_result(
            stack.bootstrap_servers, ledger_result(stack, rule_id, applied, "applied")
        )

        async def settled() -> bool:
            return await self.status(stack, applied) == "succeeded"

        await eventually(settled, what="the applied result")
        still = await self.status(stack, pending)
        quarantined = await stack.runtime.pool.fetchval("SELECT count(*) FROM quarantine")
        assert (still, quarantined) == ("pending", 0)
        assert await self.cap_used(stack, rule_id) == 20
