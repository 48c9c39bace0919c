"""What a rule has used: counted from the ledger's results, shown as ``capUsed``, and a
floor for ``capMax``.

Most tests hand results straight to the handler's logic in a transaction, as the
``rules.usage`` subscriber does, and then look through the HTTP API; one runs the
whole path through a real broker.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts import ALL_TOPICS, POINTS_RESULTS, PointsResult, PointsResultEvent
from infra.kafka_admin import create_topics
from services.rules.app import create_app
from services.rules.rules import record_usage
from tests.helpers import (
    RULES_URL,
    RulesStack,
    Seeder,
    Tenant,
    asgi_client,
    eventually,
    new_tenant,
    produce,
    rules_settings,
    rules_transaction,
)


async def active_rule(http: httpx.AsyncClient, tenant: Tenant, cap_max: int) -> dict[str, Any]:
    starts = datetime.now(UTC) - timedelta(hours=1)
    body = {
        "name": "Welcome bonus",
        "type": "earn",
        "environment": "staging",
        "apiTrigger": True,
        "authorizedClientIds": [tenant.client.client_id],
        "capMax": cap_max,
        "startsAt": starts.isoformat(),
        "endsAt": (starts + timedelta(days=30)).isoformat(),
    }
    created = await http.post("/v1/rules", json=body, headers=tenant.headers)
    assert created.status_code == 201, created.text
    activated = await http.post(
        f"/v1/rules/{created.json()['id']}/activate", headers=tenant.headers
    )
    assert activated.status_code == 200, activated.text
    rule: dict[str, Any] = activated.json()
    return rule


def result(tenant: Tenant, rule_id: str, amount: int, *, applied: bool = True) -> PointsResultEvent:
    """What the ledger publishes about one request on ``rule_id``."""
    data = PointsResult(
        request_id=uuid.uuid4().hex,
        transaction_id=uuid.uuid4(),
        client_id=tenant.client.client_id,
        rule_id=rule_id,
        user_id="member-1",
        type="earn",
        amount=amount,
        status="applied" if applied else "rejected",
        reason=None if applied else "MEMBER_BLOCKED",
        balance=amount if applied else None,
        processed_at=datetime.now(UTC),
    )
    return PointsResultEvent.new_event(
        data=data, environment="staging", org_id=tenant.org_id, correlation_id="usage-test"
    )


async def deliver(database_url: str, *events: PointsResultEvent) -> list[bool]:
    """Hand ``events`` to the usage handler's logic, one transaction each, like the subscriber."""
    counted = []
    for event in events:
        async with rules_transaction(database_url) as connection:
            counted.append(await record_usage(connection, event))
    return counted


async def read_rule(http: httpx.AsyncClient, tenant: Tenant, rule_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/rules/{rule_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def set_cap(
    http: httpx.AsyncClient, tenant: Tenant, rule: dict[str, Any], cap_max: int | None
) -> httpx.Response:
    return await http.patch(
        f"/v1/rules/{rule['id']}",
        json={"version": rule["version"], "capMax": cap_max},
        headers=tenant.headers,
    )


class TestCountingUsage:
    async def test_a_new_rule_has_used_nothing(self, stack: RulesStack, tenant: Tenant) -> None:
        rule = await active_rule(stack.http, tenant, cap_max=1000)

        assert rule["capUsed"] == 0

    async def test_applied_results_add_up_in_cap_used(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await active_rule(stack.http, tenant, cap_max=1000)

        await deliver(
            stack.database_url, result(tenant, rule["id"], 30), result(tenant, rule["id"], 20)
        )

        assert (await read_rule(stack.http, tenant, rule["id"]))["capUsed"] == 50
        listed = await stack.http.get("/v1/rules", headers=tenant.headers)
        assert [item["capUsed"] for item in listed.json()["items"]] == [50]

    async def test_a_redelivered_result_is_counted_once(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await active_rule(stack.http, tenant, cap_max=1000)
        event = result(tenant, rule["id"], 30)

        counted = await deliver(stack.database_url, event, event)

        assert counted == [True, False]
        assert (await read_rule(stack.http, tenant, rule["id"]))["capUsed"] == 30

    async def test_rejected_results_count_for_nothing(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        rule = await active_rule(stack.http, tenant, cap_max=1000)

        await deliver(stack.database_url, result(tenant, rule["id"], 40, applied=False))

        assert (await read_rule(stack.http, tenant, rule["id"]))["capUsed"] == 0

    async def test_usage_of_one_rule_does_not_touch_another(
        self, stack: RulesStack, tenant: Tenant
    ) -> None:
        used = await active_rule(stack.http, tenant, cap_max=1000)
        untouched = await active_rule(stack.http, tenant, cap_max=1000)

        await deliver(stack.database_url, result(tenant, used["id"], 70))

        assert (await read_rule(stack.http, tenant, untouched["id"]))["capUsed"] == 0


class TestCapFloor:
    @pytest.fixture
    async def used_rule(self, stack: RulesStack, tenant: Tenant) -> dict[str, Any]:
        """An active rule with a cap of 1000 that has moved 120 points."""
        rule = await active_rule(stack.http, tenant, cap_max=1000)
        await deliver(
            stack.database_url, result(tenant, rule["id"], 100), result(tenant, rule["id"], 20)
        )
        return await read_rule(stack.http, tenant, rule["id"])

    async def test_a_cap_below_what_was_used_is_refused_naming_the_used_amount(
        self, stack: RulesStack, tenant: Tenant, used_rule: dict[str, Any]
    ) -> None:
        response = await set_cap(stack.http, tenant, used_rule, 119)

        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "CAP_BELOW_USAGE"
        assert problem["field"] == "capMax"
        assert problem["capUsed"] == 120
        assert "120" in problem["detail"]
        after = await read_rule(stack.http, tenant, used_rule["id"])
        assert (after["capMax"], after["version"]) == (1000, used_rule["version"])

    async def test_a_paused_rule_keeps_the_same_floor(
        self, stack: RulesStack, tenant: Tenant, used_rule: dict[str, Any]
    ) -> None:
        paused = await stack.http.post(f"/v1/rules/{used_rule['id']}/pause", headers=tenant.headers)
        assert paused.status_code == 200, paused.text

        response = await set_cap(stack.http, tenant, paused.json(), 50)

        assert response.status_code == 409
        assert response.json()["code"] == "CAP_BELOW_USAGE"

    async def test_a_cap_equal_to_what_was_used_is_accepted(
        self, stack: RulesStack, tenant: Tenant, used_rule: dict[str, Any]
    ) -> None:
        response = await set_cap(stack.http, tenant, used_rule, 120)

        assert response.status_code == 200, response.text
        assert (response.json()["capMax"], response.json()["capUsed"]) == (120, 120)

    async def test_the_cap_can_still_be_removed(
        self, stack: RulesStack, tenant: Tenant, used_rule: dict[str, Any]
    ) -> None:
        response = await set_cap(stack.http, tenant, used_rule, None)

        assert response.status_code == 200, response.text
        assert response.json()["capMax"] is None

    async def test_other_changes_do_not_trip_on_usage(
        self, stack: RulesStack, tenant: Tenant, used_rule: dict[str, Any]
    ) -> None:
        response = await stack.http.patch(
            f"/v1/rules/{used_rule['id']}",
            json={"version": used_rule["version"], "name": "Renamed"},
            headers=tenant.headers,
        )

        assert response.status_code == 200, response.text


async def test_an_applied_result_published_to_the_broker_shows_in_cap_used(
    database_url: str, kafka_bootstrap_servers: str
) -> None:
    await create_topics(kafka_bootstrap_servers, ALL_TOPICS)
    settings = rules_settings(database_url, kafka_bootstrap_servers)
    app, runtime = create_app(settings)
    await runtime.start()
    try:
        async with asgi_client(app, RULES_URL) as http:
            tenant = await new_tenant(http, Seeder(database_url, settings))
            rule = await active_rule(http, tenant, cap_max=1000)
            event = result(tenant, rule["id"], 25)
            # The same member's results share a partition, so they arrive in this order:
            # once the last one is counted, the redelivery before it has been handled too.
            published = [event, event, result(tenant, rule["id"], 5)]
            await produce(kafka_bootstrap_servers, POINTS_RESULTS, published)

            async def all_counted() -> dict[str, Any] | None:
                seen = await read_rule(http, tenant, rule["id"])
                return seen if seen["capUsed"] >= 30 else None

            seen = await eventually(all_counted, timeout=60, what="the results in capUsed")
            assert seen["capUsed"] == 30
            inbox = await runtime.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE event_id = $1", event.event_id
            )
            assert inbox == 1
    finally:
        await runtime.stop()
