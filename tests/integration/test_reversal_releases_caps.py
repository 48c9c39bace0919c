"""A reversal in the ledger gives a rule's cap back, end to end.

The rules service, the gateway and the ledger run in-process on one database
and one broker. A developer triggers a capped rule up to its cap, the ledger
applies it, an editor reverses the transaction through the ledger's API, and
the ledger's ``points.reversed`` event reaches the gateway (which frees the
reservation, so the rule accepts triggers again) and the rules service (which
lowers ``capUsed``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio

from contracts import ALL_TOPICS, PointsResultEvent
from infra import db
from infra.kafka_admin import create_topics
from infra.runtime import ServiceRuntime
from infra.tokens import JwksVerifier
from services.ledger.app import create_app as create_ledger_app
from services.ledger.settings import LedgerSettings
from services.rules.app import create_app as create_rules_app
from services.trigger import settlement
from services.trigger.app import create_app as create_trigger_app
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
    login,
    rules_settings,
)
from tests.integration.test_trigger_gateway import (
    PROJECTION_TIMEOUT,
    REQUESTS_PATH,
    Console,
    assert_refused,
    gateway_settings,
)

LEDGER_URL = "http://ledger.test"


@dataclass
class Platform:
    """Three services in-process, one organisation, its editor and its staging client."""

    rules: httpx.AsyncClient
    gateway: httpx.AsyncClient
    ledger: httpx.AsyncClient
    gateway_runtime: ServiceRuntime
    database_url: str
    console: Console
    developer: dict[str, str]
    client_id: str

    async def trigger(self, rule_id: str, amount: int, user_id: str) -> httpx.Response:
        body = {
            "userId": user_id,
            "ruleId": rule_id,
            "amount": amount,
            "requestId": f"req-{uuid.uuid4().hex}",
        }
        return await self.gateway.post(REQUESTS_PATH, json=body, headers=self.developer)

    async def request_view(self, request_id: str) -> dict[str, Any]:
        response = await self.gateway.get(f"{REQUESTS_PATH}/{request_id}", headers=self.developer)
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    async def settled(self, accepted: httpx.Response) -> dict[str, Any]:
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["requestId"]

        async def settled() -> dict[str, Any] | None:
            view = await self.request_view(request_id)
            return view if view["status"] != "pending" else None

        return await eventually(settled, timeout=PROJECTION_TIMEOUT, what="the ledger's result")

    async def reverse(self, transaction_id: str) -> dict[str, Any]:
        response = await self.ledger.post(
            f"/v1/transactions/{transaction_id}/reversal",
            json={"reversalId": str(uuid.uuid4()), "reason": "order refunded"},
            headers=self.console.headers,
        )
        assert response.status_code == 201, response.text
        outcome: dict[str, Any] = response.json()
        return outcome

    async def reversal_seen(self, request_id: str) -> dict[str, Any]:
        async def reversal() -> dict[str, Any] | None:
            view = await self.request_view(request_id)
            return view if "reversal" in view else None

        return await eventually(reversal, timeout=PROJECTION_TIMEOUT, what="the reversal")

    async def cap_used(self, rule_id: str) -> int:
        response = await self.rules.get(f"/v1/rules/{rule_id}", headers=self.console.headers)
        assert response.status_code == 200, response.text
        return int(response.json()["capUsed"])

    async def rule(self, **fields: Any) -> str:
        rule = await self.console.rule(authorizedClientIds=[self.client_id], **fields)
        rule_id: str = rule["id"]

        async def projected() -> bool:
            version = await self.gateway_runtime.pool.fetchval(
                "SELECT version FROM rules WHERE rule_id = $1", rule_id
            )
            return version == rule["version"]

        await eventually(projected, timeout=PROJECTION_TIMEOUT, what="the rule at the gateway")
        return rule_id


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def platform(postgres_server_dsn: str) -> AsyncIterator[Platform]:
    with kafka_broker() as bootstrap_servers:
        async with fresh_database(postgres_server_dsn) as database_url:
            await create_topics(bootstrap_servers, ALL_TOPICS)
            settings = rules_settings(database_url, bootstrap_servers)
            rules_app, rules_runtime = create_rules_app(settings)

            def verifier() -> JwksVerifier:
                return JwksVerifier(RULES_URL, http=asgi_client(rules_app, RULES_URL))

            trigger_app, trigger_runtime = create_trigger_app(
                gateway_settings(database_url, bootstrap_servers), verifier=verifier()
            )
            ledger_app, ledger_runtime = create_ledger_app(
                LedgerSettings(
                    mode="development",
                    database_url=database_url,
                    kafka_bootstrap_servers=bootstrap_servers,
                    startup_timeout_seconds=15,
                ),
                verifier=verifier(),
            )
            async with contextlib.AsyncExitStack() as running:
                for runtime in (rules_runtime, trigger_runtime, ledger_runtime):
                    await runtime.start()
                    running.push_async_callback(runtime.stop)
                rules_http = await running.enter_async_context(asgi_client(rules_app, RULES_URL))
                seeder = Seeder(database_url, settings)
                organisation = await seeder.organisation()
                client = await seeder.client(organisation.id, "staging")
                yield Platform(
                    rules=rules_http,
                    gateway=await running.enter_async_context(
                        asgi_client(trigger_app, TRIGGER_URL)
                    ),
                    ledger=await running.enter_async_context(asgi_client(ledger_app, LEDGER_URL)),
                    gateway_runtime=trigger_runtime,
                    database_url=database_url,
                    console=Console(
                        rules_http, bearer(await login(rules_http, organisation.email))
                    ),
                    developer=bearer(await client_token(rules_http, client)),
                    client_id=client.client_id,
                )


class TestReversalReleasesCaps:
    async def test_a_rule_at_its_cap_accepts_triggers_again_once_an_award_is_reversed(
        self, platform: Platform
    ) -> None:
        rule_id = await platform.rule(capMax=100, capPerMember=100)
        award = await platform.trigger(rule_id, 100, "member-a")
        assert (await platform.settled(award))["status"] == "succeeded"
        assert_refused(await platform.trigger(rule_id, 10, "member-a"), 400, "CAP_EXCEEDED")

        await platform.reverse(award.json()["transactionId"])

        view = await platform.reversal_seen(award.json()["requestId"])
        assert view["status"] == "succeeded"
        assert (view["reversal"]["reversedAmount"], view["reversal"]["uncoveredAmount"]) == (
            100,
            0,
        )
        assert (await platform.trigger(rule_id, 100, "member-a")).status_code == 202

    async def test_only_the_points_taken_back_are_released(self, platform: Platform) -> None:
        capped = await platform.rule(capMax=100)
        shop = await platform.rule(type="redeem")
        award = await platform.trigger(capped, 100, "member-b")
        await platform.settled(award)
        await platform.settled(await platform.trigger(shop, 70, "member-b"))

        outcome = await platform.reverse(award.json()["transactionId"])

        assert (outcome["reversed"], outcome["uncovered"]) == (30, 70)
        await platform.reversal_seen(award.json()["requestId"])
        assert_refused(await platform.trigger(capped, 31, "member-c"), 400, "CAP_EXCEEDED")
        assert (await platform.trigger(capped, 30, "member-c")).status_code == 202

    async def test_a_reversal_lowers_the_rules_cap_used(self, platform: Platform) -> None:
        rule_id = await platform.rule(capMax=500)
        first = await platform.trigger(rule_id, 120, "member-d")
        await platform.settled(first)
        await platform.settled(await platform.trigger(rule_id, 80, "member-d"))
        await eventually(
            lambda: _equals(platform.cap_used(rule_id), 200),
            timeout=PROJECTION_TIMEOUT,
            what="capUsed counting both awards",
        )

        await platform.reverse(first.json()["transactionId"])

        await eventually(
            lambda: _equals(platform.cap_used(rule_id), 80),
            timeout=PROJECTION_TIMEOUT,
            what="capUsed lowered by the reversal",
        )

    async def test_the_same_reversal_delivered_again_releases_nothing_more(
        self, platform: Platform
    ) -> None:
        rule_id = await platform.rule(capMax=50)
        award = await platform.trigger(rule_id, 50, "member-e")
        await platform.settled(award)
        await platform.reverse(award.json()["transactionId"])
        await platform.reversal_seen(award.json()["requestId"])
        assert (await platform.trigger(rule_id, 40, "member-e")).status_code == 202
        reversal = await reversal_event(platform.database_url, award.json()["transactionId"])

        # Under a new event id, as a republished reversal would come.
        again = reversal.model_copy(update={"event_id": uuid.uuid4()})
        pool = platform.gateway_runtime.pool
        async with pool.acquire() as connection, connection.transaction():
            await settlement.settle_results(connection, [again])

        assert_refused(await platform.trigger(rule_id, 11, "member-e"), 400, "CAP_EXCEEDED")
        assert (await platform.trigger(rule_id, 10, "member-e")).status_code == 202


async def _equals(probe: Any, expected: int) -> bool:
    return bool(await probe == expected)


async def reversal_event(database_url: str, transaction_id: str) -> PointsResultEvent:
    """The ``points.reversed`` event the ledger staged for ``transaction_id``."""
    connection = await db.connect(database_url, "ledger")
    try:
        for row in await connection.fetch(
            "SELECT payload FROM outbox WHERE headers->>'type' = 'points.reversed'"
        ):
            event = PointsResultEvent.model_validate_json(row["payload"])
            if str(event.data.transaction_id) == transaction_id:
                return event
    finally:
        await connection.close()
    raise AssertionError(f"no reversal event for {transaction_id}")
